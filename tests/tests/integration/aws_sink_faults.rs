//! The Kinesis features sink and the Firehose archive sink lose nothing and double nothing when the
//! service throttles, fails with 5xx, or fails some entries of a call.
//!
//! A `FaultProxy` (`pageflow_tests::fault_proxy`) sits between the sinks' SDK clients and a moto
//! server: it answers some calls with a throttling error or a 500 without forwarding them, and takes
//! some entries out of other calls, reporting them failed (they were really not written). Streams,
//! buckets and the read-back go to moto directly. Each sink is run twice: with the SDK's standard
//! retries (which retry some whole-call errors themselves; partial failures never reach them) and
//! with the SDK's retries off (every fault reaches the sinks' own retries).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::retry::RetryConfig;
use pageflow_connectors::batch::{Delivery, RetryPolicy};
use pageflow_connectors::firehose_sink::DeliveryStream;
use pageflow_connectors::kinesis::sink::KinesisStream;
use pageflow_connectors::retry::Backoff;
use pageflow_dataflow::features::Feature;
use pageflow_tests::aws::{self, MotoServer};
use pageflow_tests::clients::{
    feature_id_of, firehose_client, kinesis_client, lines_of, read_objects, read_stream, s3_client,
};
use pageflow_tests::fault_proxy::{
    FIREHOSE_PUT_RECORD_BATCH, Fault, FaultPlan, FaultProxy, Faults, KINESIS_PUT_RECORDS,
    ProxyStats,
};
use pageflow_tests::synthetic_features;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// 30 % of the calls fail some entries (each with a 30 % chance), 10 % are throttled as a whole and
/// 5 % answer 500.
const FAULTS: Faults = Faults {
    throttle: 0.10,
    internal_error: 0.05,
    partial: 0.30,
    failed_entry_share: 0.30,
};

/// The first calls' faults, whatever the seed: every kind surely happens, and with the SDK's
/// standard retries (3 attempts) the opening throttle, 500 and throttle exhaust them, so a whole-call
/// failure reaches the sink too.
const OPENING: [Fault; 6] = [
    Fault::Throttle,
    Fault::InternalError,
    Fault::Throttle,
    Fault::Partial,
    Fault::InternalError,
    Fault::Partial,
];

/// Features handed to a sink per `write_*` call (as the job does per output batch), so that a few
/// thousand features make enough calls for every kind of fault to happen.
const FEATURES_PER_WRITE: usize = 150;

/// The sinks' own retries: many attempts, millisecond backoff.
fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: Some(30),
        backoff: Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(20),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SdkRetries {
    /// The SDK's standard mode (3 attempts), with millisecond backoff to keep the test short.
    Standard,
    /// One attempt: every whole-call error reaches the sink.
    Disabled,
}

impl SdkRetries {
    fn config(self) -> RetryConfig {
        match self {
            SdkRetries::Standard => RetryConfig::standard()
                .with_initial_backoff(Duration::from_millis(5))
                .with_max_backoff(Duration::from_millis(50)),
            SdkRetries::Disabled => RetryConfig::disabled(),
        }
    }
}

/// The features to deliver, checked to be a few thousand with distinct ids.
fn features_to_deliver() -> Vec<Feature> {
    let features = synthetic_features(6_000, 5);
    let ids: std::collections::BTreeSet<&str> = features.iter().map(Feature::feature_id).collect();
    assert_eq!(ids.len(), features.len(), "feature ids are distinct");
    assert!(features.len() > 1_500, "{} features", features.len());
    features
}

/// The sum of several deliveries.
fn add(total: &mut Delivery, report: Delivery) {
    total.written += report.written;
    total.calls += report.calls;
    total.retried_entries += report.retried_entries;
    total.undeliverable.extend(report.undeliverable);
    if total.fatal.is_none() {
        total.fatal = report.fatal;
    }
}

/// Asserts that every expected id was read exactly once and nothing else was read.
fn assert_exactly_once(expected: &[&str], read: &HashMap<String, usize>) {
    let missing: Vec<&&str> = expected
        .iter()
        .filter(|id| !read.contains_key(**id))
        .collect();
    let doubled: Vec<(&String, &usize)> = read.iter().filter(|(_, n)| **n > 1).collect();
    let expected_set: std::collections::HashSet<&str> = expected.iter().copied().collect();
    let foreign: Vec<&String> = read
        .keys()
        .filter(|id| !expected_set.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty() && doubled.is_empty() && foreign.is_empty(),
        "{} missing (e.g. {:?}), {} read more than once (e.g. {:?}), {} unexpected (e.g. {:?})",
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        doubled.len(),
        doubled.iter().take(3).collect::<Vec<_>>(),
        foreign.len(),
        foreign.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(read.values().sum::<usize>(), expected.len());
}

/// What every run must show: everything written once, faults of every kind injected, failed
/// entries re-sent by the sink, and, with the SDK's retries off, every call made by the sink.
fn assert_delivery_and_faults(
    report: &Delivery,
    stats: &ProxyStats,
    operation: &str,
    records: usize,
    retries: SdkRetries,
) {
    let op = stats.operation(operation);
    eprintln!("{operation} with SDK retries {retries:?}: {op:?}; {stats:?}");
    eprintln!(
        "sink: written {}, calls {}, retried entries {}",
        report.written, report.calls, report.retried_entries
    );
    assert!(
        report.undeliverable.is_empty() && report.fatal.is_none(),
        "{} undeliverable, e.g. {:?}; fatal: {:?}",
        report.undeliverable.len(),
        report.undeliverable.first().map(|(_, reason)| reason),
        report.fatal
    );
    assert_eq!(report.written, records);
    assert_eq!(
        (stats.anomalies, stats.upstream_errors, stats.bad_requests),
        (0, 0, 0),
        "the proxy applied every fault as planned and forwarded every call"
    );
    assert!(op.throttled > 0, "throttles were injected: {op:?}");
    assert!(op.internal_errors > 0, "500s were injected: {op:?}");
    assert!(
        op.partial_calls > 0,
        "partial failures were injected: {op:?}"
    );
    assert_eq!(
        op.forwarded_entries, records as u64,
        "each record reached the service exactly once"
    );
    assert_eq!(
        report.retried_entries as u64, op.failed_entries,
        "the sink re-sent each entry reported failed, once per failure"
    );
    assert!(report.retried_entries > 0);
    match retries {
        SdkRetries::Disabled => assert_eq!(
            op.requests, report.calls as u64,
            "without SDK retries, every request is a call of the sink"
        ),
        SdkRetries::Standard => {
            let whole_call_faults = op.throttled + op.internal_errors;
            let sdk_resent = op.requests - report.calls as u64;
            assert!(
                op.requests > report.calls as u64,
                "the SDK re-sent some calls that failed as a whole (500s at least)"
            );
            assert!(
                sdk_resent < whole_call_faults,
                "the SDK re-sends only calls that failed as a whole, and some whole-call \
                 failures (the opening throttle, 500, throttle) reached the sink: \
                 {sdk_resent} re-sent of {whole_call_faults}"
            );
        }
    }
    assert!(
        stats.connections < op.requests,
        "clients keep their connections alive ({} connections, {} requests)",
        stats.connections,
        op.requests
    );
}

async fn kinesis_under_faults(retries: SdkRetries, seed: u64) -> TestResult {
    let started = Instant::now();
    let moto = MotoServer::start()?;
    let direct = kinesis_client(&moto.endpoint, SdkRetries::Standard.config());
    direct
        .create_stream()
        .stream_name("features")
        .shard_count(3)
        .send()
        .await?;
    let proxy = FaultProxy::start(
        &moto.endpoint,
        FaultPlan::new(seed)
            .on(KINESIS_PUT_RECORDS, FAULTS)
            .starting_with(KINESIS_PUT_RECORDS, &OPENING),
    )?;
    let sink = KinesisStream::with_client(
        kinesis_client(&proxy.endpoint(), retries.config()),
        "features",
    );

    let features = features_to_deliver();
    let mut report = Delivery::default();
    for chunk in features.chunks(FEATURES_PER_WRITE) {
        add(&mut report, sink.write_features(chunk, policy()).await);
    }
    let stats = proxy.stats();
    drop(proxy);
    assert_delivery_and_faults(
        &report,
        &stats,
        KINESIS_PUT_RECORDS,
        features.len(),
        retries,
    );

    // Read every shard from the start, as a consumer would.
    let mut read: HashMap<String, usize> = HashMap::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for record in read_stream(&direct, "features").await? {
        let id = feature_id_of(&record.data)?;
        *read.entry(id.clone()).or_default() += 1;
        keys.insert(id, record.partition_key);
    }
    let ids: Vec<&str> = features.iter().map(Feature::feature_id).collect();
    assert_exactly_once(&ids, &read);
    for feature in &features {
        assert_eq!(
            keys.get(feature.feature_id()).map(String::as_str),
            Some(feature.partition_key()),
            "records keep their partition keys when re-sent"
        );
    }
    eprintln!("kinesis, SDK retries {retries:?}: {:?}", started.elapsed());
    Ok(())
}

async fn firehose_under_faults(retries: SdkRetries, seed: u64) -> TestResult {
    let started = Instant::now();
    let moto = MotoServer::start()?;
    let s3 = s3_client(&moto.endpoint);
    s3.create_bucket().bucket("archive").send().await?;
    let destination = aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
        .bucket_arn("arn:aws:s3:::archive")
        .role_arn("arn:aws:iam::123456789012:role/pageflow-firehose")
        .prefix("processed/")
        .build()?;
    firehose_client(&moto.endpoint, SdkRetries::Standard.config())
        .create_delivery_stream()
        .delivery_stream_name("pageflow-processed")
        .extended_s3_destination_configuration(destination)
        .send()
        .await?;
    let proxy = FaultProxy::start(
        &moto.endpoint,
        FaultPlan::new(seed)
            .on(FIREHOSE_PUT_RECORD_BATCH, FAULTS)
            .starting_with(FIREHOSE_PUT_RECORD_BATCH, &OPENING),
    )?;
    // One line per record: many entries per call, so that partial failures and per-entry
    // retries are exercised at scale (packing is tested in `aws_sinks`).
    let sink = DeliveryStream::with_client(
        firehose_client(&proxy.endpoint(), retries.config()),
        "pageflow-processed",
    )
    .with_lines_per_record(1);

    let features = features_to_deliver();
    let mut report = Delivery::default();
    for chunk in features.chunks(FEATURES_PER_WRITE) {
        let lines = chunk.iter().map(|f| f.to_json().into_bytes()).collect();
        add(&mut report, sink.write_lines(lines, policy()).await);
    }
    let stats = proxy.stats();
    drop(proxy);
    assert_delivery_and_faults(
        &report,
        &stats,
        FIREHOSE_PUT_RECORD_BATCH,
        features.len(),
        retries,
    );

    // Every object of the prefix, page by page.
    let archived = read_objects(&s3, "archive", "processed/").await?;
    let objects = archived.len();
    let mut read: HashMap<String, usize> = HashMap::new();
    for bytes in &archived {
        assert!(bytes.ends_with(b"\n"), "objects are whole JSON lines");
    }
    for line in lines_of(&archived) {
        let json: serde_json::Value = serde_json::from_slice(&line)?;
        let id = json["feature_id"].as_str().unwrap_or_default().to_string();
        *read.entry(id).or_default() += 1;
    }
    let forwarded = stats.operation(FIREHOSE_PUT_RECORD_BATCH).forwarded;
    assert_eq!(
        objects as u64, forwarded,
        "one object per call that reached moto"
    );
    let ids: Vec<&str> = features.iter().map(Feature::feature_id).collect();
    assert_exactly_once(&ids, &read);
    eprintln!("firehose, SDK retries {retries:?}: {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_sink_writes_each_feature_once_under_faults_with_sdk_retries() -> TestResult {
    kinesis_under_faults(SdkRetries::Standard, 11).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_sink_writes_each_feature_once_under_faults_without_sdk_retries() -> TestResult {
    kinesis_under_faults(SdkRetries::Disabled, 12).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_sink_archives_each_feature_once_under_faults_with_sdk_retries() -> TestResult {
    firehose_under_faults(SdkRetries::Standard, 13).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_sink_archives_each_feature_once_under_faults_without_sdk_retries() -> TestResult {
    firehose_under_faults(SdkRetries::Disabled, 14).await
}

/// Reads one HTTP/1.1 response with a `Content-Length` from a kept-alive connection.
fn read_response(reader: &mut BufReader<TcpStream>) -> Result<(u16, String), String> {
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .map_err(|e| e.to_string())?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.ok_or("no Content-Length")?];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The proxy serves several requests on one connection, with `Content-Length` and chunked bodies,
/// and injects nothing without a plan.
#[test]
fn the_proxy_keeps_connections_alive_and_reads_chunked_bodies() -> TestResult {
    let moto = MotoServer::start()?;
    let proxy = FaultProxy::start(&moto.endpoint, FaultPlan::new(1))?;
    let address = proxy.endpoint();
    let address = address.trim_start_matches("http://");
    let stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let authorization = aws::dummy_sigv4_authorization("kinesis");
    let head = |target: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-amz-json-1.1\r\n\
             X-Amz-Target: Kinesis_20131202.{target}\r\nX-Amz-Date: 20250101T000000Z\r\n\
             Authorization: {authorization}\r\n"
        )
    };

    let body = r#"{"StreamName":"kept-alive","ShardCount":1}"#;
    let request = format!(
        "{}Content-Length: {}\r\n\r\n{body}",
        head("CreateStream"),
        body.len()
    );
    writer.write_all(request.as_bytes())?;
    let (status, text) = read_response(&mut reader)?;
    assert_eq!(status, 200, "{text}");

    let body = br#"{"StreamName":"kept-alive"}"#;
    let (first, second) = body.split_at(10);
    let request = format!(
        "{}Transfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        head("DescribeStreamSummary"),
        first.len(),
        String::from_utf8_lossy(first),
        second.len(),
        String::from_utf8_lossy(second)
    );
    writer.write_all(request.as_bytes())?;
    let (status, text) = read_response(&mut reader)?;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("kept-alive"), "{text}");

    let stats = proxy.stats();
    assert_eq!((stats.connections, stats.requests()), (1, 2));
    assert_eq!(
        stats
            .operation("Kinesis_20131202.DescribeStreamSummary")
            .forwarded,
        1
    );
    // Dropping the proxy closes the connection it serves and returns.
    drop(proxy);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty());
    Ok(())
}
