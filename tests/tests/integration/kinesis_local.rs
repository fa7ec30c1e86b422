//! The Kinesis shard readers against kinesis-local (a realistic local Kinesis, see
//! `pageflow_tests::kinesis_local`): the polling [`ShardReader`] and the enhanced fan-out
//! [`FanOutReader`], each reading several shards of 56-digit sequence numbers in order, resuming
//! from a saved point without re-emitting or losing anything, and following a reshard from a closed
//! parent to its children; `ensure_consumer` registering a consumer once and reusing it.
//!
//! kinesis-local never ends a closed shard's subscription (its events carry no `ChildShards`), so
//! the end of a shard under fan-out, and refused subscriptions, are tested against a small scripted
//! `SubscribeToShard` server at the end of this file that speaks the event-stream wire format.
//!
//! Each test starts its own server. Everything is awaited with a deadline; nothing sleeps for a
//! fixed time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    ConsumerStatus, PutRecordsRequestEntry, ScalingType, Shard, StreamStatus,
};
use pageflow_connectors::ConnectorError;
use pageflow_connectors::kinesis::fan_out_reader::{
    FanOutReader, FanOutSettings, ensure_consumer, ensure_consumer_within, stream_arn,
};
use pageflow_connectors::kinesis::kpl::aggregate;
use pageflow_connectors::kinesis::polling_reader::{PollingReader, ReaderSettings};
use pageflow_connectors::kinesis::shard_reader::{
    ResumePoint, ShardBatch, ShardRecord, StartPosition,
};
use pageflow_connectors::retry::Backoff;
use pageflow_tests::aws::http_request;
use pageflow_tests::clients::kinesis_client;
use pageflow_tests::kinesis_local::KinesisLocal;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

/// The longest any awaited condition may take (reads of a few thousand records take seconds).
const DEADLINE: Duration = Duration::from_secs(90);

/// A server of this test and a client of it.
struct Local {
    server: KinesisLocal,
    client: Client,
}

async fn local() -> Result<Local, BoxError> {
    // Starting polls with blocking sleeps: keep them off the runtime's workers.
    let server = tokio::task::spawn_blocking(KinesisLocal::start).await??;
    let client = client(&server.endpoint, RetryConfig::standard());
    Ok(Local { server, client })
}

/// The tests' Kinesis client, whose calls fail after 30 s instead of waiting for ever on a stuck
/// server (an event stream is not bounded by this once `SubscribeToShard` has answered).
fn client(endpoint: &str, retry: RetryConfig) -> Client {
    let config = kinesis_client(endpoint, retry)
        .config()
        .to_builder()
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .build();
    Client::from_conf(config)
}

/// The next batch, or an error once `started + DEADLINE` has passed.
async fn next_within(
    reader: &mut impl Reader,
    started: Instant,
    what: &str,
) -> Result<ShardBatch, BoxError> {
    let left = DEADLINE.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, reader.next()).await {
        Ok(batch) => Ok(batch?),
        Err(_) => Err(format!("{what}: not done within {} s", DEADLINE.as_secs()).into()),
    }
}

/// Fails with `what` once `started + DEADLINE` has passed.
fn check_deadline(started: Instant, what: &str) -> TestResult {
    if started.elapsed() > DEADLINE {
        return Err(format!("{what}: not done within {} s", DEADLINE.as_secs()).into());
    }
    Ok(())
}

/// Creates a stream and waits until it is `ACTIVE`; returns its ARN.
async fn create_stream(client: &Client, name: &str, shards: i32) -> Result<String, BoxError> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await?;
    await_active(client, name).await
}

async fn await_active(client: &Client, name: &str) -> Result<String, BoxError> {
    let started = Instant::now();
    let mut interval = Duration::from_millis(10);
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await?;
        let summary = summary
            .stream_description_summary()
            .ok_or("DescribeStreamSummary without a summary")?;
        if *summary.stream_status() == StreamStatus::Active {
            return Ok(summary.stream_arn().to_string());
        }
        check_deadline(started, &format!("stream {name} becoming ACTIVE"))?;
        tokio::time::sleep(interval).await; // a poll's interval
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

/// Every shard of a stream, one page of `ListShards` at a time (exercising its pagination).
async fn list_shards(client: &Client, stream: &str) -> Result<Vec<Shard>, BoxError> {
    let mut shards = Vec::new();
    let mut page = client
        .list_shards()
        .stream_name(stream)
        .max_results(1)
        .send()
        .await?;
    loop {
        shards.extend(page.shards().iter().cloned());
        let Some(token) = page.next_token().map(str::to_string) else {
            return Ok(shards);
        };
        page = client
            .list_shards()
            .next_token(token)
            .max_results(1)
            .send()
            .await?;
    }
}

/// One Kinesis record to write: its partition key, its bytes, and the user records it holds (one,
/// or those of a KPL aggregate).
#[derive(Clone, Debug)]
struct Entry {
    key: String,
    data: Vec<u8>,
    users: Vec<Vec<u8>>,
}

/// `n` plain records `<prefix>-<i>` over 61 partition keys.
fn plain(prefix: &str, n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let data = format!("{prefix}-{i:05}").into_bytes();
            Entry {
                key: format!("user-{}", i % 61),
                users: vec![data.clone()],
                data,
            }
        })
        .collect()
}

/// A KPL aggregate of `n` user records `<prefix>-<i>`.
fn aggregated(prefix: &str, key: &str, n: usize) -> Entry {
    let users: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("{prefix}-{i:03}").into_bytes())
        .collect();
    let input: Vec<(&str, &[u8])> = users.iter().map(|u| (key, u.as_slice())).collect();
    Entry {
        key: key.to_string(),
        data: aggregate(&input),
        users,
    }
}

/// Where a record was written.
#[derive(Clone, Debug)]
struct Written {
    shard: String,
    sequence: String,
    users: Vec<Vec<u8>>,
}

/// Writes entries in order, 500 per `PutRecords` call; every one must succeed.
async fn put(client: &Client, stream: &str, entries: &[Entry]) -> Result<Vec<Written>, BoxError> {
    let mut written = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(500) {
        let records = chunk
            .iter()
            .map(|e| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&e.key)
                    .data(Blob::new(e.data.clone()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(records))
            .send()
            .await?;
        assert_eq!(output.failed_record_count(), Some(0), "{output:?}");
        for (entry, result) in chunk.iter().zip(output.records()) {
            written.push(Written {
                shard: result
                    .shard_id()
                    .ok_or("a result without shard")?
                    .to_string(),
                sequence: result
                    .sequence_number()
                    .ok_or("a result without sequence number")?
                    .to_string(),
                users: entry.users.clone(),
            });
        }
    }
    Ok(written)
}

/// What a reader should emit for these records: (sequence number, sub-sequence, bytes) per user
/// record, in order.
fn expected(written: &[&Written]) -> Vec<(String, u64, Vec<u8>)> {
    written
        .iter()
        .flat_map(|w| {
            w.users
                .iter()
                .enumerate()
                .map(|(i, u)| (w.sequence.clone(), i as u64, u.clone()))
        })
        .collect()
}

fn emitted(records: &[ShardRecord]) -> Vec<(String, u64, Vec<u8>)> {
    records
        .iter()
        .map(|r| {
            (
                r.position.sequence.as_str().to_string(),
                r.position.sub_sequence,
                r.data.clone(),
            )
        })
        .collect()
}

/// The written records by shard, in write order.
fn by_shard(written: &[Written]) -> BTreeMap<String, Vec<&Written>> {
    let mut shards: BTreeMap<String, Vec<&Written>> = BTreeMap::new();
    for w in written {
        shards.entry(w.shard.clone()).or_default().push(w);
    }
    shards
}

/// What the tests need of both readers.
trait Reader {
    async fn next(&mut self) -> Result<ShardBatch, ConnectorError>;
}

impl Reader for PollingReader {
    async fn next(&mut self) -> Result<ShardBatch, ConnectorError> {
        self.next_batch().await
    }
}

impl Reader for FanOutReader {
    async fn next(&mut self) -> Result<ShardBatch, ConnectorError> {
        self.next_batch().await
    }
}

/// Reads batches until at least `count` records have come (a batch may bring more: the caller's
/// comparison then fails), or the shard ends.
async fn read_count(reader: &mut impl Reader, count: usize) -> Result<Vec<ShardRecord>, BoxError> {
    let started = Instant::now();
    let mut records = Vec::new();
    while records.len() < count {
        let what = format!("reading {count} records (got {})", records.len());
        let batch = next_within(reader, started, &what).await?;
        records.extend(batch.records);
        if batch.finished_with_children.is_some() {
            break;
        }
        check_deadline(
            started,
            &format!("reading {count} records (got {})", records.len()),
        )?;
    }
    Ok(records)
}

/// Reads a closed shard to its end: its records and its children.
async fn read_to_end(
    reader: &mut impl Reader,
) -> Result<(Vec<ShardRecord>, Vec<String>), BoxError> {
    let started = Instant::now();
    let mut records = Vec::new();
    loop {
        let what = format!("reading a closed shard to its end (got {})", records.len());
        let batch = next_within(reader, started, &what).await?;
        records.extend(batch.records);
        if let Some(children) = batch.finished_with_children {
            return Ok((records, children));
        }
        check_deadline(
            started,
            &format!("reading a closed shard to its end (got {})", records.len()),
        )?;
    }
}

fn polling() -> ReaderSettings {
    ReaderSettings {
        max_records: 250,
        min_call_interval: Duration::from_millis(20),
        ..ReaderSettings::default()
    }
}

fn fan_out() -> FanOutSettings {
    FanOutSettings {
        idle_timeout: Duration::from_secs(10),
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(500),
        },
        ..FanOutSettings::default()
    }
}

#[test]
fn kinesis_local_starts_answers_and_frees_its_port_when_dropped() -> TestResult {
    let server = KinesisLocal::start()?;
    let port = server.port();
    assert_eq!(server.endpoint, format!("http://127.0.0.1:{port}"));
    assert_eq!(
        http_request(port, "GET", "/healthcheck", &[], b"")?.status,
        200
    );
    let env = server.env();
    assert!(env.contains(&(
        "AWS_ENDPOINT_URL_KINESIS".to_string(),
        server.endpoint.clone()
    )));
    drop(server);
    // Dropping kills and reaps it: nothing answers there any more.
    assert!(http_request(port, "GET", "/healthcheck", &[], b"").is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_reader_reads_every_shard_in_order_and_resumes_exactly() -> TestResult {
    let Local { server, client } = local().await?;
    create_stream(&client, "polled", 3).await?;
    let written = put(&client, "polled", &plain("p", 3000)).await?;
    assert!(
        written
            .iter()
            .all(|w| w.sequence.len() == 56 && w.sequence.bytes().all(|b| b.is_ascii_digit())),
        "sequence numbers have 56 digits, like AWS's: {}",
        written[0].sequence
    );
    let shards = by_shard(&written);
    assert_eq!(shards.len(), 3, "61 partition keys reach all 3 shards");

    for (shard, records) in &shards {
        let mut reader = PollingReader::new(
            client.clone(),
            "polled",
            shard,
            StartPosition::TrimHorizon,
            None,
            polling(),
        );
        let want = expected(records);
        let got = read_count(&mut reader, want.len()).await?;
        assert_eq!(
            emitted(&got),
            want,
            "{shard}: every record once, in order\n{}",
            server.output()
        );
        let next = next_within(&mut reader, Instant::now(), "the batch after the last").await?;
        assert!(next.records.is_empty(), "{shard}: nothing after the last");
    }

    // Stop a reader part-way (a batch boundary), then resume a new one from its point.
    let (shard, records) = shards.iter().next().ok_or("a shard")?;
    let want = expected(records);
    let mut first = PollingReader::new(
        client.clone(),
        "polled",
        shard,
        StartPosition::TrimHorizon,
        None,
        polling(),
    );
    let head = read_count(&mut first, want.len() / 2).await?;
    assert!(head.len() < want.len(), "stopped part-way: {}", head.len());
    let resume = first.resume_point().cloned().ok_or("a resume point")?;
    assert_eq!(resume.position, head[head.len() - 1].position);
    drop(first);
    let mut second = PollingReader::new(
        client.clone(),
        "polled",
        shard,
        // Ignored: the resume point wins.
        StartPosition::Latest,
        Some(resume),
        polling(),
    );
    let tail = read_count(&mut second, want.len() - head.len()).await?;
    let mut all = emitted(&head);
    all.extend(emitted(&tail));
    assert_eq!(all, want, "resumed: nothing re-emitted, nothing lost");
    Ok(())
}

/// Writes `before`, splits the one shard into two, waits for the reshard, writes `after`.
async fn resharded(
    client: &Client,
    stream: &str,
    before: usize,
    after: usize,
) -> Result<(String, Vec<Written>, Vec<Written>, BTreeSet<String>), BoxError> {
    create_stream(client, stream, 1).await?;
    let parent = list_shards(client, stream).await?[0].shard_id().to_string();
    let early = put(client, stream, &plain("before", before)).await?;
    client
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(2)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await?;
    let started = Instant::now();
    let children = loop {
        await_active(client, stream).await?;
        let children: BTreeSet<String> = list_shards(client, stream)
            .await?
            .iter()
            .filter(|s| s.parent_shard_id() == Some(parent.as_str()))
            .map(|s| s.shard_id().to_string())
            .collect();
        if children.len() == 2 {
            break children;
        }
        check_deadline(started, "the reshard")?;
        tokio::time::sleep(Duration::from_millis(50)).await; // a poll's interval
    };
    let late = put(client, stream, &plain("after", after)).await?;
    assert!(
        early.iter().all(|w| w.shard == parent) && late.iter().all(|w| children.contains(&w.shard)),
        "writes go to the open shards"
    );
    Ok((parent, early, late, children))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_reader_ends_a_closed_parent_with_its_children_which_hold_the_later_records()
-> TestResult {
    let Local { server, client } = local().await?;
    let (parent, early, late, children) = resharded(&client, "split", 1200, 1200).await?;

    let mut reader = PollingReader::new(
        client.clone(),
        "split",
        &parent,
        StartPosition::TrimHorizon,
        None,
        polling(),
    );
    let (records, reported) = read_to_end(&mut reader).await?;
    assert!(reader.is_finished());
    assert_eq!(
        emitted(&records),
        expected(&early.iter().collect::<Vec<_>>()),
        "the parent holds exactly the records written before the reshard\n{}",
        server.output()
    );
    assert_eq!(reported.into_iter().collect::<BTreeSet<_>>(), children);
    assert!(
        next_within(&mut reader, Instant::now(), "the batch after the end")
            .await?
            .records
            .is_empty()
    );

    let late_by_shard = by_shard(&late);
    let mut from_children = Vec::new();
    for child in &children {
        let want = expected(late_by_shard.get(child).map_or(&[][..], Vec::as_slice));
        let mut reader = PollingReader::new(
            client.clone(),
            "split",
            child,
            StartPosition::TrimHorizon,
            None,
            polling(),
        );
        let got = read_count(&mut reader, want.len()).await?;
        assert_eq!(emitted(&got), want, "{child}: its records, in order");
        assert!(
            next_within(&mut reader, Instant::now(), "the batch after the end")
                .await?
                .records
                .is_empty()
        );
        from_children.extend(got.into_iter().map(|r| r.data));
    }
    from_children.sort();
    let mut want: Vec<Vec<u8>> = late.iter().flat_map(|w| w.users.clone()).collect();
    want.sort();
    assert_eq!(from_children, want, "each later record once, in some child");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_consumer_is_registered_once_and_reused() -> TestResult {
    let Local {
        server: _server,
        client,
    } = local().await?;
    let arn = create_stream(&client, "efo", 1).await?;
    assert_eq!(stream_arn(&client, "efo", Backoff::default()).await?, arn);
    assert_eq!(stream_arn(&client, &arn, Backoff::default()).await?, arn);

    let first = ensure_consumer(&client, &arn, "pageflow", Backoff::default()).await?;
    let again = ensure_consumer(&client, &arn, "pageflow", Backoff::default()).await?;
    assert_eq!(
        first, again,
        "a second call (a restart) reuses the consumer"
    );

    // Two workers at once: one registers, the other finds it (ResourceInUseException).
    let (a, b) = tokio::join!(
        ensure_consumer(&client, &arn, "raced", Backoff::default()),
        ensure_consumer(&client, &arn, "raced", Backoff::default()),
    );
    assert_eq!(a?, b?);

    let consumers = client
        .list_stream_consumers()
        .stream_arn(&arn)
        .send()
        .await?;
    let mut names: Vec<&str> = consumers
        .consumers()
        .iter()
        .map(|c| c.consumer_name())
        .collect();
    names.sort();
    assert_eq!(names, ["pageflow", "raced"], "registered once each");
    assert!(
        consumers
            .consumers()
            .iter()
            .all(|c| *c.consumer_status() == ConsumerStatus::Active)
    );

    let missing = stream_arn(&client, "no-such-stream", Backoff::default()).await;
    let error = missing.err().ok_or("a missing stream is an error")?;
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("no-such-stream"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_consumer_gives_up_on_a_consumer_that_stays_creating() -> TestResult {
    let server = tokio::task::spawn_blocking(|| {
        KinesisLocal::start_with(&[("REGISTER_STREAM_CONSUMER_DURATION", "120s")])
    })
    .await??;
    let client = client(&server.endpoint, RetryConfig::standard());
    let arn = create_stream(&client, "slow", 1).await?;
    let started = Instant::now();
    let result = ensure_consumer_within(
        &client,
        &arn,
        "pageflow",
        Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        Duration::from_millis(1500),
    )
    .await;
    let error = result
        .err()
        .ok_or("a consumer that stays CREATING is an error")?;
    let message = error.to_string();
    assert!(
        message.contains("CREATING") && message.contains("gave up") && message.contains("pageflow"),
        "{message}"
    );
    assert!(error.is_retryable(), "a later run may find it ACTIVE");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reader_reads_every_record_once_in_order_and_resumes_exactly() -> TestResult {
    let Local { server, client } = local().await?;
    let arn = create_stream(&client, "pushed", 2).await?;
    let consumer = ensure_consumer(&client, &arn, "pageflow", Backoff::default()).await?;
    // Plain records with KPL aggregates among them, on both shards.
    let mut entries = plain("p", 1500);
    for i in 0..12 {
        let position = 100 * (i + 1);
        entries.insert(
            position,
            aggregated(&format!("agg{i}"), &format!("user-{i}"), 20),
        );
    }
    let written = put(&client, "pushed", &entries).await?;
    let shards = by_shard(&written);
    assert_eq!(shards.len(), 2);

    let mut readers = Vec::new();
    for (shard, records) in &shards {
        let want = expected(records);
        let mut reader = FanOutReader::new(
            client.clone(),
            &consumer,
            shard,
            StartPosition::TrimHorizon,
            None,
            fan_out(),
        );
        let got = read_count(&mut reader, want.len()).await?;
        assert_eq!(
            emitted(&got),
            want,
            "{shard}: every user record once, in order\n{}",
            server.output()
        );
        readers.push((shard.clone(), reader, want, got));
    }

    // Records written while subscribed are pushed on the same subscriptions.
    let live = put(&client, "pushed", &plain("live", 120)).await?;
    let live = by_shard(&live);
    for (shard, reader, want, got) in &mut readers {
        let here = live.get(shard).map_or(&[][..], Vec::as_slice);
        let more = read_count(reader, here.len()).await?;
        assert_eq!(emitted(&more), expected(here), "{shard}: the live records");
        assert_eq!(
            reader.subscription_count(),
            1,
            "one subscription did it all"
        );
        want.extend(expected(here));
        got.extend(more);
    }

    for (shard, reader, want, all) in readers {
        drop(reader); // its subscription is released (kinesis-local allows one per shard)
        // Resume inside an aggregate (user records 0..=4 emitted), then after a whole record.
        let inside = all
            .iter()
            .position(|r| r.position.sub_sequence == 4)
            .ok_or("an aggregate on each shard")?;
        let plain_at = all.len() / 3;
        assert_eq!(all[plain_at].position.sub_sequence, 0);
        for (index, record_complete) in [(inside, false), (plain_at, true)] {
            let resume = ResumePoint {
                position: all[index].position.clone(),
                record_complete,
            };
            let mut reader = FanOutReader::new(
                client.clone(),
                &consumer,
                &shard,
                StartPosition::TrimHorizon,
                Some(resume),
                fan_out(),
            );
            let rest = read_count(&mut reader, want.len() - index - 1).await?;
            assert_eq!(
                emitted(&rest),
                want[index + 1..],
                "{shard}: resumed after record {index}: nothing again, nothing lost"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reader_resubscribes_without_losing_or_repeating_records() -> TestResult {
    let Local { server, client } = local().await?;
    let arn = create_stream(&client, "renewed", 1).await?;
    let consumer = ensure_consumer(&client, &arn, "pageflow", Backoff::default()).await?;
    let settings = FanOutSettings {
        // Every event on a new subscription, at once: continuation and the service's refusals
        // while the previous subscription is being released are both exercised.
        renew_after: Some(Duration::ZERO),
        min_subscribe_interval: Duration::ZERO,
        ..fan_out()
    };
    let mut reader = FanOutReader::new(
        client.clone(),
        &consumer,
        "shardId-000000000000",
        StartPosition::TrimHorizon,
        None,
        settings,
    );
    let mut want = Vec::new();
    let mut got = Vec::new();
    for round in 0..5 {
        let mut entries = plain(&format!("r{round}"), 200);
        entries.insert(77, aggregated(&format!("a{round}"), "user-1", 9));
        let written = put(&client, "renewed", &entries).await?;
        want.extend(expected(&written.iter().collect::<Vec<_>>()));
        got.extend(read_count(&mut reader, want.len() - got.len()).await?);
        assert_eq!(
            emitted(&got),
            want,
            "round {round}: in order, once\n{}",
            server.output()
        );
    }
    // Idle events (no records) move the continuation too; none may bring anything again.
    for _ in 0..3 {
        assert!(
            next_within(&mut reader, Instant::now(), "the batch after the end")
                .await?
                .records
                .is_empty()
        );
    }
    assert!(
        reader.subscription_count() >= 8,
        "resubscribed for each event: {}",
        reader.subscription_count()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reads_a_resharded_stream_parent_then_children() -> TestResult {
    let Local { server, client } = local().await?;
    let (parent, early, late, children) = resharded(&client, "efo-split", 800, 800).await?;
    let arn = stream_arn(&client, "efo-split", Backoff::default()).await?;
    let consumer = ensure_consumer(&client, &arn, "pageflow", Backoff::default()).await?;

    let mut reader = FanOutReader::new(
        client.clone(),
        &consumer,
        &parent,
        StartPosition::TrimHorizon,
        None,
        fan_out(),
    );
    let want = expected(&early.iter().collect::<Vec<_>>());
    let got = read_count(&mut reader, want.len()).await?;
    assert_eq!(
        emitted(&got),
        want,
        "the parent: the records before the reshard\n{}",
        server.output()
    );
    // (kinesis-local does not end a closed shard's subscription; see the scripted tests below.)

    let late_by_shard = by_shard(&late);
    let mut total = 0;
    for child in &children {
        let want = expected(late_by_shard.get(child).map_or(&[][..], Vec::as_slice));
        let mut reader = FanOutReader::new(
            client.clone(),
            &consumer,
            child,
            StartPosition::TrimHorizon,
            None,
            fan_out(),
        );
        let got = read_count(&mut reader, want.len()).await?;
        assert_eq!(emitted(&got), want, "{child}: its records, in order");
        total += got.len();
    }
    assert_eq!(total, late.len(), "each later record once");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A scripted SubscribeToShard server: each call gets the next reply of the script.

/// One reply to a `SubscribeToShard` call.
enum Reply {
    /// An HTTP error with the service's error type, e.g. 400 `LimitExceededException`.
    Refuse(u16, &'static str),
    /// An event stream of these messages, ended (connection closed) after the last one.
    Events(Vec<Vec<u8>>),
}

/// A server answering `SubscribeToShard` calls from a script; it records each request's body.
struct ScriptedSubscribe {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ScriptedSubscribe {
    fn start(script: Vec<Reply>) -> Result<Self, BoxError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let endpoint = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        // Serves the script, one connection per call, then stops listening (the thread ends and
        // the listener closes; further calls are refused).
        thread::spawn(move || {
            for reply in script {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(String::from_utf8_lossy(&body).into_owned());
                let mut stream = reader.into_inner();
                let response = match reply {
                    Reply::Refuse(status, error_type) => {
                        let body =
                            format!(r#"{{"__type":"{error_type}","message":"scripted refusal"}}"#);
                        format!(
                            "HTTP/1.1 {status} Refused\r\nContent-Type: application/x-amz-json-1.1\r\n\
                             x-amzn-ErrorType: {error_type}\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    }
                    Reply::Events(messages) => {
                        let mut bytes = b"HTTP/1.1 200 OK\r\n\
                            Content-Type: application/vnd.amazon.eventstream\r\n\
                            Connection: close\r\n\r\n"
                            .to_vec();
                        for message in messages {
                            bytes.extend(message);
                        }
                        bytes
                    }
                };
                let _ = stream.write_all(&response);
                let _ = stream.flush();
                // Dropping the stream closes the connection: the event stream ends.
            }
        });
        Ok(ScriptedSubscribe { endpoint, requests })
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One event-stream message (prelude, string headers, payload, CRC-32s), as the service sends.
fn message(headers: &[(&str, &str)], payload: &str) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        encoded_headers.push(name.len() as u8);
        encoded_headers.extend(name.as_bytes());
        encoded_headers.push(7); // a string value
        encoded_headers.extend((value.len() as u16).to_be_bytes());
        encoded_headers.extend(value.as_bytes());
    }
    let total = 12 + encoded_headers.len() + payload.len() + 4;
    let mut bytes = Vec::with_capacity(total);
    bytes.extend((total as u32).to_be_bytes());
    bytes.extend((encoded_headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&bytes);
    bytes.extend(prelude_crc.to_be_bytes());
    bytes.extend(encoded_headers);
    bytes.extend(payload.as_bytes());
    let message_crc = crc32(&bytes);
    bytes.extend(message_crc.to_be_bytes());
    bytes
}

fn initial_response() -> Vec<u8> {
    message(
        &[
            (":message-type", "event"),
            (":event-type", "initial-response"),
            (":content-type", "application/json"),
        ],
        "{}",
    )
}

/// A `SubscribeToShardEvent` with records `(sequence, data)`; `continuation` is the JSON value of
/// `ContinuationSequenceNumber` (`None`: absent), `children` the ids of `ChildShards` (if any).
fn event(records: &[(&str, &str)], continuation: Option<&str>, children: &[&str]) -> Vec<u8> {
    let records: Vec<String> = records
        .iter()
        .map(|(sequence, data)| {
            format!(
                r#"{{"SequenceNumber":"{sequence}","ApproximateArrivalTimestamp":1.7639136E9,"Data":"{}","PartitionKey":"u"}}"#,
                base64(data.as_bytes())
            )
        })
        .collect();
    let mut payload = format!(
        r#"{{"Records":[{}],"MillisBehindLatest":0"#,
        records.join(",")
    );
    if let Some(continuation) = continuation {
        payload.push_str(&format!(r#","ContinuationSequenceNumber":{continuation}"#));
    }
    if !children.is_empty() {
        let children: Vec<String> = children
            .iter()
            .map(|id| {
                format!(
                    r#"{{"ShardId":"{id}","ParentShards":["shardId-000000000000"],"HashKeyRange":{{"StartingHashKey":"0","EndingHashKey":"1"}}}}"#
                )
            })
            .collect();
        payload.push_str(&format!(r#","ChildShards":[{}]"#, children.join(",")));
    }
    payload.push('}');
    message(
        &[
            (":message-type", "event"),
            (":event-type", "SubscribeToShardEvent"),
            (":content-type", "application/json"),
        ],
        &payload,
    )
}

fn exception(error_type: &str) -> Vec<u8> {
    message(
        &[
            (":message-type", "exception"),
            (":exception-type", error_type),
            (":content-type", "application/json"),
        ],
        r#"{"message":"scripted"}"#,
    )
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const SEQ_1: &str = "49680495253410145070812741568634265901551446629491408898";
const SEQ_2: &str = "49680495253410145070812741568635474827371061258666115074";
const SEQ_3: &str = "49680495253410145070812741568636683753190675887840821250";
const SEQ_4: &str = "49680495253410145070812741568637892679010290517015527426";

/// Reads the scripted shard to its end with a client that does not retry by itself, so that every
/// refusal reaches the reader.
async fn read_scripted(
    end_of_shard: Vec<u8>,
) -> Result<
    (
        ScriptedSubscribe,
        FanOutReader,
        Vec<ShardRecord>,
        Vec<String>,
    ),
    BoxError,
> {
    let server = ScriptedSubscribe::start(vec![
        Reply::Refuse(400, "LimitExceededException"),
        Reply::Refuse(500, "InternalFailure"),
        // A subscription refused inside the stream: the previous one is still live.
        Reply::Events(vec![exception("ResourceInUseException")]),
        Reply::Events(vec![
            initial_response(),
            event(
                &[(SEQ_1, "one"), (SEQ_2, "two")],
                Some(&format!("\"{SEQ_2}\"")),
                &[],
            ),
            event(&[(SEQ_3, "three")], Some(&format!("\"{SEQ_3}\"")), &[]),
        ]),
        // The subscription ended (as after 5 minutes): the next one continues after SEQ_3.
        Reply::Events(vec![
            initial_response(),
            event(&[(SEQ_4, "four")], Some(&format!("\"{SEQ_4}\"")), &[]),
            end_of_shard,
        ]),
    ])?;
    let client = client(&server.endpoint, RetryConfig::disabled());
    let mut reader = FanOutReader::new(
        client,
        "arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/c:1",
        "shardId-000000000000",
        StartPosition::TrimHorizon,
        None,
        FanOutSettings {
            min_subscribe_interval: Duration::ZERO,
            ..fan_out()
        },
    );
    let (records, children) = read_to_end(&mut reader).await?;
    Ok((server, reader, records, children))
}

fn assert_read_the_scripted_shard(
    server: &ScriptedSubscribe,
    reader: &FanOutReader,
    records: &[ShardRecord],
    children: &[String],
) {
    let data: Vec<&[u8]> = records.iter().map(|r| r.data.as_slice()).collect();
    assert_eq!(
        data,
        [b"one".as_slice(), b"two", b"three", b"four"],
        "every record once, in order, across the refusals and the resubscription"
    );
    assert_eq!(children, ["shardId-000000000001", "shardId-000000000002"]);
    assert!(reader.is_finished());
    let requests = server.requests();
    assert_eq!(requests.len(), 5, "{requests:#?}");
    assert!(
        requests[..4]
            .iter()
            .all(|r| r.contains(r#""Type":"TRIM_HORIZON""#)),
        "refused subscriptions are tried again from the same place: {requests:#?}"
    );
    assert!(
        requests[4].contains(r#""Type":"AFTER_SEQUENCE_NUMBER""#) && requests[4].contains(SEQ_3),
        "resubscribed after the last continuation: {}",
        requests[4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reader_survives_refusals_and_ends_a_closed_shard_with_its_children() -> TestResult
{
    // AWS leaves `ContinuationSequenceNumber` out of a closed shard's last event.
    let end = event(&[], None, &["shardId-000000000001", "shardId-000000000002"]);
    let (server, mut reader, records, children) = read_scripted(end).await?;
    assert_read_the_scripted_shard(&server, &reader, &records, &children);
    // Finished: no more calls (the script is over, so one would fail).
    assert_eq!(
        next_within(&mut reader, Instant::now(), "a finished reader's batch").await?,
        ShardBatch::default()
    );
    assert_eq!(server.requests().len(), 5);
    assert_eq!(
        reader.subscription_count(),
        2,
        "two subscriptions delivered events"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reader_ends_a_closed_shard_whose_last_continuation_is_null() -> TestResult {
    let end = event(
        &[],
        Some("null"),
        &["shardId-000000000001", "shardId-000000000002"],
    );
    let (server, reader, records, children) = read_scripted(end).await?;
    assert_read_the_scripted_shard(&server, &reader, &records, &children);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reader_stops_on_a_missing_consumer() -> TestResult {
    let server = ScriptedSubscribe::start(vec![Reply::Refuse(400, "ResourceNotFoundException")])?;
    let client = client(&server.endpoint, RetryConfig::disabled());
    let mut reader = FanOutReader::new(
        client,
        "arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/gone:1",
        "shardId-000000000000",
        StartPosition::TrimHorizon,
        None,
        fan_out(),
    );
    let error = tokio::time::timeout(DEADLINE, reader.next_batch())
        .await?
        .err()
        .ok_or("a missing consumer is an error")?;
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(
        message.contains("ResourceNotFoundException") && message.contains("consumer/gone"),
        "{message}"
    );
    Ok(())
}
