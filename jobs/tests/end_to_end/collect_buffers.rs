//! `pageflow collect` when Kinesis refuses writes, against moto and the fault proxy: the events
//! wait in the portal's SQS FIFO queue, or in the local spool when SQS refuses them too (also
//! across a `kill -9`), and the drainer moves them to Kinesis once it takes writes again. Every
//! event answered 200 ends in its stream exactly once after dropping duplicate `event_id`s, and
//! each user's events in the order they were sent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_sqs::types::QueueAttributeName;
use pageflow_tests::aws::{MotoServer, aws_env, http_request};
use pageflow_tests::clients::{kinesis_client, read_stream, sqs_client};
use pageflow_tests::fault_proxy::{
    FaultPlan, FaultProxy, Faults, KINESIS_PUT_RECORDS, SQS_RECEIVE_MESSAGE, SQS_SEND_MESSAGE_BATCH,
};
use pageflow_tests::job_process::{JobProcess, poll_until};

use crate::collect::{create_streams, pageview};

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How long the drained events may take to be in Kinesis once it takes writes again.
const DRAIN_LIMIT: Duration = Duration::from_secs(90);

const USERS: usize = 4;

fn throttled() -> Faults {
    Faults {
        throttle: 1.0,
        ..Faults::default()
    }
}

fn failing() -> Faults {
    Faults {
        internal_error: 1.0,
        ..Faults::default()
    }
}

/// Writes the configuration of a collector for portals g1 and ge, each with its SQS FIFO queue
/// (`pageviews-<portal>-buffer.fifo`) and the spool under `dir`.
fn write_config(dir: &Path, endpoint: &str, spool_max_bytes: u64) -> std::io::Result<PathBuf> {
    let config = dir.join("collect.toml");
    let portals: String = ["g1", "ge"]
        .iter()
        .map(|portal| {
            format!(
                "[[collect.portals]]\nportal = \"{portal}\"\nstream = \"pageviews-{portal}\"\nsqs_queue = \"pageviews-{portal}-buffer.fifo\"\n\n"
            )
        })
        .collect();
    std::fs::write(
        &config,
        format!(
            "[collect]\nlisten = \"127.0.0.1:0\"\nspool_dir = \"{}\"\nspool_max_bytes = {spool_max_bytes}\n\n{portals}\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n",
            dir.join("spool").display(),
        ),
    )?;
    Ok(config)
}

/// Starts the collector of `config` and waits until it is ready; returns it and its port.
fn spawn_collector(
    config: &Path,
    endpoint: &str,
) -> Result<(JobProcess, u16), Box<dyn std::error::Error>> {
    let mut collector = JobProcess::spawn(
        Command::new(BIN)
            .args(["collect", "--config"])
            .arg(config)
            .envs(aws_env(endpoint)),
    )?;
    let address = collector.http_address(Duration::from_secs(30))?;
    let port: u16 = address.rsplit(':').next().ok_or("no port")?.parse()?;
    let ready = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        http_request(port, "GET", "/readyz", &[], b"")
            .ok()
            .filter(|response| response.status == 200)
    });
    if ready.is_none() {
        return Err(format!("the collector never got ready:\n{}", collector.stderr()).into());
    }
    Ok((collector, port))
}

async fn create_queues(endpoint: &str) -> TestResult {
    let sqs = sqs_client(endpoint);
    for portal in ["g1", "ge"] {
        sqs.create_queue()
            .queue_name(format!("pageviews-{portal}-buffer.fifo"))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .send()
            .await?;
    }
    Ok(())
}

/// Sends requests as `USERS` readers of both portals would, one request at a time, and keeps
/// what was answered.
#[derive(Default)]
struct Readers {
    round: usize,
    /// The event ids answered 200, per user, in the order sent.
    acknowledged: BTreeMap<String, Vec<String>>,
    /// Event ids sent whose request got no answer (the collector was killed): they may or may
    /// not be in Kinesis.
    unanswered: BTreeSet<String>,
}

impl Readers {
    /// One request with one event of each user; `Err` when it got no answer.
    fn send_round(&mut self, port: u16) -> Result<u16, String> {
        let round = self.round;
        self.round += 1;
        let events: Vec<(String, String)> = (0..USERS)
            .map(|u| {
                (
                    format!("u-{u}"),
                    // Zero-padded, so that a user's ids sort in the order they were sent.
                    format!("u-{u}-{round:05}"),
                )
            })
            .collect();
        let body = events
            .iter()
            .enumerate()
            .map(|(u, (user, id))| pageview(id, if u % 2 == 0 { "g1" } else { "ge" }, user))
            .collect::<Vec<_>>()
            .join("\n");
        match http_request(port, "POST", "/v1/collect", &[], body.as_bytes()) {
            Ok(response) if response.status == 200 => {
                for (user, id) in events {
                    self.acknowledged.entry(user).or_default().push(id);
                }
                Ok(200)
            }
            Ok(response) => Err(format!(
                "a request was answered {}: {}",
                response.status,
                response.text()
            )),
            Err(error) => {
                self.unanswered.extend(events.into_iter().map(|(_, id)| id));
                Err(format!("a request got no answer: {error}"))
            }
        }
    }

    fn acknowledged_count(&self) -> usize {
        self.acknowledged.values().map(Vec::len).sum()
    }
}

/// Both portals' streams: the event ids per user in stream order, each kept at its first
/// occurrence (later ones are duplicates the job drops by `event_id`).
async fn stored_ids(
    kinesis: &aws_sdk_kinesis::Client,
) -> Result<BTreeMap<String, Vec<String>>, Box<dyn std::error::Error>> {
    let mut seen = BTreeSet::new();
    let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for stream in ["pageviews-g1", "pageviews-ge"] {
        for record in read_stream(kinesis, stream).await? {
            let event: serde_json::Value = serde_json::from_slice(&record.data)?;
            let user = event["user_id"].as_str().unwrap_or_default().to_string();
            assert_eq!(user, record.partition_key, "keyed by user_id");
            let id = event["event_id"].as_str().unwrap_or_default().to_string();
            if seen.insert(id.clone()) {
                by_user.entry(user).or_default().push(id);
            }
        }
    }
    Ok(by_user)
}

/// Waits until every acknowledged event is in Kinesis, then checks that each user's events are
/// there exactly once (duplicates dropped) and in the order sent; unanswered events may be there
/// too, in their place.
async fn assert_all_drained_in_order(
    kinesis: &aws_sdk_kinesis::Client,
    readers: &Readers,
    collector: &JobProcess,
) -> TestResult {
    let started = Instant::now();
    let stored = loop {
        let stored = stored_ids(kinesis).await?;
        let all_there = readers.acknowledged.iter().all(|(user, ids)| {
            let have: BTreeSet<&String> = stored.get(user).into_iter().flatten().collect();
            ids.iter().all(|id| have.contains(id))
        });
        if all_there {
            break stored;
        }
        if started.elapsed() > DRAIN_LIMIT {
            return Err(format!(
                "after {DRAIN_LIMIT:?} not every acknowledged event is in Kinesis:\n{}",
                collector.stderr()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (user, ids) in &readers.acknowledged {
        let in_stream: Vec<&String> = stored[user]
            .iter()
            .filter(|id| !readers.unanswered.contains(*id) || ids.contains(id))
            .collect();
        let mut sorted = in_stream.clone();
        sorted.sort();
        assert_eq!(in_stream, sorted, "{user}'s events in the order sent");
        let expected: BTreeSet<&String> = ids.iter().collect();
        let extra: Vec<&&String> = in_stream
            .iter()
            .filter(|id| !expected.contains(**id) && !readers.unanswered.contains(**id))
            .collect();
        assert!(extra.is_empty(), "{user}: events never sent: {extra:?}");
    }
    Ok(())
}

fn metric(port: u16, name: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let text = http_request(port, "GET", "/metrics", &[], b"")?.text();
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0))
}

/// Kinesis refuses every write for 10 s. The collector answers 200 all the same: the events wait
/// in the portals' SQS FIFO queues, the events sent after the outage follow them there, and the
/// drainer moves them all once Kinesis is back, before writing directly again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_kinesis_throttles_the_events_wait_in_sqs_and_are_drained_in_order() -> TestResult {
    let moto = MotoServer::start()?;
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    create_streams(&kinesis).await?;
    create_queues(&moto.endpoint).await?;
    let proxy = FaultProxy::start(&moto.endpoint, FaultPlan::new(11))?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &proxy.endpoint(), 1 << 30)?;
    let (collector, port) = spawn_collector(&config, &proxy.endpoint())?;

    let mut readers = Readers::default();
    readers.send_round(port)?;
    proxy.set_faults(KINESIS_PUT_RECORDS, throttled());
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(10) {
        readers.send_round(port)?;
        // Readers' pace, not synchronisation: the outage lasts 10 s whatever is sent.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.set_faults(KINESIS_PUT_RECORDS, Faults::default());
    for _ in 0..20 {
        readers.send_round(port)?;
    }
    assert_all_drained_in_order(&kinesis, &readers, &collector).await?;

    let through_sqs = metric(port, "pageflow_collect_events_written_total{path=\"sqs\"}")?;
    assert!(
        through_sqs >= (readers.acknowledged_count() / 2) as f64,
        "most events went through SQS: {through_sqs} of {}",
        readers.acknowledged_count()
    );
    assert_eq!(
        metric(
            port,
            "pageflow_collect_events_written_total{path=\"spool\"}"
        )?,
        0.0
    );
    assert!(proxy.stats().operation(KINESIS_PUT_RECORDS).throttled >= 5);
    // Drained, then direct writes again: the drainer said so, and the lag is back to 0.
    let drained = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        metric(port, "pageflow_collect_events_drained_total{path=\"sqs\"}")
            .ok()
            .filter(|&n| n >= through_sqs)
    });
    assert!(drained.is_some(), "every SQS event counted as drained");
    // Each portal's drainer says so once its queue is seen empty (g1 and ge: both).
    let switched_back = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        (collector
            .stderr()
            .matches("writing to Kinesis directly again")
            .count()
            >= 2)
            .then_some(())
    });
    assert!(switched_back.is_some(), "{}", collector.stderr());
    let after = metric(
        port,
        "pageflow_collect_events_written_total{path=\"kinesis\"}",
    )?;
    readers.send_round(port)?;
    assert_eq!(
        metric(
            port,
            "pageflow_collect_events_written_total{path=\"kinesis\"}"
        )?,
        after + USERS as f64,
        "a request after the drain goes straight to Kinesis"
    );
    Ok(())
}

/// Kinesis and SQS both refuse writes: the events go to the local spool, fsync'd before the
/// answer. The collector is killed (-9) while requests come in and started again on the same
/// spool, which it replays: once both services are back, every event answered 200 is in Kinesis,
/// exactly once after dropping duplicates, each user's in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kinesis_and_sqs_down_the_spool_keeps_every_event_across_a_kill() -> TestResult {
    let moto = MotoServer::start()?;
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    create_streams(&kinesis).await?;
    create_queues(&moto.endpoint).await?;
    let proxy = FaultProxy::start(
        &moto.endpoint,
        FaultPlan::new(13)
            .on(KINESIS_PUT_RECORDS, throttled())
            .on(SQS_SEND_MESSAGE_BATCH, failing())
            .on(SQS_RECEIVE_MESSAGE, failing()),
    )?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &proxy.endpoint(), 1 << 30)?;
    let (mut collector, port) = spawn_collector(&config, &proxy.endpoint())?;

    // Requests keep coming from another thread while the collector is killed.
    let readers = Arc::new(Mutex::new(Readers::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let readers = Arc::clone(&readers);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let sent = readers
                    .lock()
                    .map_err(|_| "poisoned".to_string())
                    .and_then(|mut r| r.send_round(port));
                if sent.is_err() {
                    return;
                }
            }
        })
    };
    let spooled = poll_until(Duration::from_secs(30), Duration::from_millis(50), || {
        metric(
            port,
            "pageflow_collect_events_written_total{path=\"spool\"}",
        )
        .ok()
        .filter(|&n| n >= 40.0)
    });
    assert!(spooled.is_some(), "events spooled:\n{}", collector.stderr());
    collector.kill();
    stop.store(true, Ordering::SeqCst);
    sender.join().map_err(|_| "the sender panicked")?;
    let mut readers = Arc::try_unwrap(readers)
        .map_err(|_| "readers still shared")?
        .into_inner()?;
    let before_kill = readers.acknowledged_count();
    assert!(before_kill >= 40, "{before_kill}");

    // Started again, still without Kinesis and SQS: the spool is replayed, new events queue
    // behind it.
    let (collector, port) = spawn_collector(&config, &proxy.endpoint())?;
    assert!(
        collector
            .stderr()
            .contains("the spool holds events from before"),
        "{}",
        collector.stderr()
    );
    assert!(
        metric(port, "pageflow_collect_spool_events{portal=\"g1\"}")? >= (before_kill / 2) as f64
    );
    for _ in 0..5 {
        readers.send_round(port)?;
    }
    assert!(
        metric(
            port,
            "pageflow_collect_drain_lag_seconds{portal=\"g1\",path=\"spool\"}"
        )? > 0.0
            || metric(port, "pageflow_collect_spool_events{portal=\"g1\"}")? > 0.0
    );
    for operation in [
        KINESIS_PUT_RECORDS,
        SQS_SEND_MESSAGE_BATCH,
        SQS_RECEIVE_MESSAGE,
    ] {
        proxy.set_faults(operation, Faults::default());
    }
    assert_all_drained_in_order(&kinesis, &readers, &collector).await?;
    let emptied = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        metric(port, "pageflow_collect_spool_bytes")
            .ok()
            .filter(|&bytes| bytes == 0.0)
    });
    assert!(emptied.is_some(), "the spool is empty once drained");
    assert!(
        metric(
            port,
            "pageflow_collect_events_drained_total{path=\"spool\"}"
        )? > 0.0
    );
    assert_eq!(metric(port, "pageflow_collect_write_failures_total")?, 0.0);
    Ok(())
}

/// Kinesis refuses writes, there is no SQS queue, and the spool is full: only then is a request
/// answered 503 (with `Retry-After`) so that the client sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_durable_nowhere_is_answered_503_to_be_sent_again() -> TestResult {
    let moto = MotoServer::start()?;
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    create_streams(&kinesis).await?;
    let proxy = FaultProxy::start(
        &moto.endpoint,
        FaultPlan::new(7).on(KINESIS_PUT_RECORDS, throttled()),
    )?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("collect.toml");
    std::fs::write(
        &config,
        format!(
            "[collect]\nlisten = \"127.0.0.1:0\"\nspool_dir = \"{}\"\nspool_max_bytes = 1048576\n\n\
             [[collect.portals]]\nportal = \"g1\"\nstream = \"pageviews-g1\"\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            dir.path().join("spool").display(),
            proxy.endpoint()
        ),
    )?;
    let (collector, port) = spawn_collector(&config, &proxy.endpoint())?;
    // Requests of 10 events of 60 kB (extra fields are allowed, up to 64 KiB a record): the
    // first fits in the 1 MiB spool, the second does not.
    let big = |request: usize| {
        (0..10)
            .map(|i| {
                let event = pageview(&format!("e-{request}-{i}"), "g1", "u-1");
                format!(
                    "{},\"padding\":\"{}\"}}",
                    event.trim_end_matches('}'),
                    "x".repeat(60_000)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let response = http_request(port, "POST", "/v1/collect", &[], big(1).as_bytes())?;
    assert_eq!(response.status, 200, "spooled: {}", response.text());
    let response = http_request(port, "POST", "/v1/collect", &[], big(2).as_bytes())?;
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(
        response
            .headers
            .iter()
            .any(|(name, value)| name == "retry-after" && value == "1"),
        "{:?}",
        response.headers
    );
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(answer["error"]["code"], "not_durable");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("send the request again"), "{message}");
    assert!(proxy.stats().operation(KINESIS_PUT_RECORDS).throttled >= 2);
    assert_eq!(metric(port, "pageflow_collect_write_failures_total")?, 1.0);
    assert_eq!(metric(port, "pageflow_collect_spool_full_total")?, 10.0);
    assert!(
        collector.stderr().contains("durable nowhere"),
        "{}",
        collector.stderr()
    );
    assert!(read_stream(&kinesis, "pageviews-g1").await?.is_empty());
    Ok(())
}

/// The URL of the queue named `queue`.
async fn queue_url(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    Ok(sqs
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await?
        .queue_url
        .ok_or("no queue URL")?)
}

/// Every message of `queue`, read and deleted; the event ids of their bodies.
async fn take_all(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let url = queue_url(sqs, queue).await?;
    let mut ids = Vec::new();
    loop {
        let output = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(3)
            .send()
            .await?;
        if output.messages().is_empty() {
            return Ok(ids);
        }
        for message in output.messages() {
            let event: serde_json::Value =
                serde_json::from_str(message.body().unwrap_or_default())?;
            ids.push(event["event_id"].as_str().unwrap_or_default().to_string());
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await?;
        }
    }
}

/// Told to stop (SIGTERM) with events in the spool, which is local disk, the collector moves them
/// to the portals' SQS queues before it exits, as soon as SQS takes them (Kinesis still refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_collector_moves_its_spooled_events_to_sqs() -> TestResult {
    let moto = MotoServer::start()?;
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    create_streams(&kinesis).await?;
    create_queues(&moto.endpoint).await?;
    let proxy = FaultProxy::start(
        &moto.endpoint,
        FaultPlan::new(17)
            .on(KINESIS_PUT_RECORDS, throttled())
            .on(SQS_SEND_MESSAGE_BATCH, failing()),
    )?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &proxy.endpoint(), 1 << 30)?;
    let (mut collector, port) = spawn_collector(&config, &proxy.endpoint())?;
    let mut readers = Readers::default();
    for _ in 0..3 {
        readers.send_round(port)?;
    }
    assert_eq!(
        metric(
            port,
            "pageflow_collect_events_written_total{path=\"spool\"}"
        )?,
        (3 * USERS) as f64
    );
    // A drainer holds what it received from the queue while Kinesis refuses it; with a short
    // visibility timeout, those messages are visible again soon after the collector exits.
    let sqs = sqs_client(&moto.endpoint);
    for portal in ["g1", "ge"] {
        let url = queue_url(&sqs, &format!("pageviews-{portal}-buffer.fifo")).await?;
        sqs.set_queue_attributes()
            .queue_url(url)
            .attributes(QueueAttributeName::VisibilityTimeout, "1")
            .send()
            .await?;
    }
    proxy.set_faults(SQS_SEND_MESSAGE_BATCH, Faults::default());
    collector.terminate()?;
    let status = collector
        .wait_timeout(Duration::from_secs(40))
        .ok_or("the collector did not stop within 40 s")?;
    let stderr = collector.stderr();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("pageflow collect: stopped"), "{stderr}");
    assert!(!stderr.contains("still in the spool"), "{stderr}");

    let mut queued = take_all(&sqs, "pageviews-g1-buffer.fifo").await?;
    queued.extend(take_all(&sqs, "pageviews-ge-buffer.fifo").await?);
    queued.sort();
    let mut sent: Vec<String> = readers.acknowledged.values().flatten().cloned().collect();
    sent.sort();
    assert_eq!(queued, sent, "every spooled event is in SQS, once");
    assert!(read_stream(&kinesis, "pageviews-g1").await?.is_empty());
    Ok(())
}
