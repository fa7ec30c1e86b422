//! The Kinesis source as the job uses it (`KinesisConsumer`: discovery, shard lineage, one
//! partition per shard handed to the workers' feeds), against kinesis-local on loopback, which
//! reshards for real: closed parents end with `ChildShards` and new writes go to the children.
//!
//! The test drains the feeds and partitions the way the ingest operator does, in one thread, and
//! reshards while it reads: every record arrives exactly once, and each user's records arrive in
//! the order they were written, across the reshard, with polling and with enhanced fan-out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ScalingType, StreamStatus};
use pageflow_connectors::kinesis_consumer::{
    ConsumerSettings, KinesisConsumer, ShardFeed, StreamSpec,
};
use pageflow_connectors::kinesis_fan_out::FanOutSettings;
use pageflow_connectors::kinesis_source::ReaderSettings;
use pageflow_dataflow::event::RawRecord;
use pageflow_dataflow::source::{PartitionFeed, PollStatus, RecordSource};
use pageflow_tests::clients::kinesis_client;
use pageflow_tests::kinesis_local::KinesisLocal;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DEADLINE: Duration = Duration::from_secs(120);
const USERS: usize = 37;

async fn await_active(client: &Client, stream: &str) -> TestResult {
    let started = Instant::now();
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await?;
        if summary
            .stream_description_summary()
            .is_some_and(|s| *s.stream_status() == StreamStatus::Active)
        {
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            return Err(format!("{stream} is not ACTIVE after {DEADLINE:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // a poll's interval
    }
}

/// Writes `count` records `user:seq`, keyed by user, continuing each user's sequence.
async fn write(
    client: &Client,
    stream: &str,
    count: usize,
    next_seq: &mut [u64],
    offset: usize,
) -> TestResult {
    let entries: Vec<PutRecordsRequestEntry> = (0..count)
        .map(|i| {
            let user = (i + offset) % USERS;
            let seq = next_seq[user];
            next_seq[user] += 1;
            PutRecordsRequestEntry::builder()
                .partition_key(format!("user-{user}"))
                .data(Blob::new(format!("user-{user}:{seq}")))
                .build()
        })
        .collect::<Result<_, _>>()?;
    for chunk in entries.chunks(250) {
        let output = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await?;
        assert_eq!(
            output.failed_record_count(),
            Some(0),
            "the emulator takes every record"
        );
    }
    Ok(())
}

/// What the test's "ingest" holds: the partitions it was given and what it read, in order.
#[derive(Default)]
struct Drain {
    partitions: Vec<Box<dyn RecordSource>>,
    names: BTreeSet<String>,
    finished: BTreeSet<String>,
    read: Vec<RawRecord>,
}

impl Drain {
    fn step(&mut self, feeds: &mut [ShardFeed]) {
        for feed in feeds.iter_mut() {
            let mut added = Vec::new();
            feed.poll_new(&mut added);
            for partition in added {
                assert!(
                    self.names.insert(partition.name().to_string()),
                    "{} handed out twice",
                    partition.name()
                );
                self.partitions.push(partition);
            }
        }
        for partition in &mut self.partitions {
            if self.finished.contains(partition.name()) {
                continue;
            }
            match partition.poll(1000, &mut self.read) {
                Ok(PollStatus::Finished) => {
                    self.finished.insert(partition.name().to_string());
                }
                Ok(_) => {}
                Err(error) => panic!("a shard partition failed: {error}"),
            }
        }
    }

    async fn until(
        &mut self,
        feeds: &mut [ShardFeed],
        what: &str,
        done: impl Fn(&Drain) -> bool,
    ) -> TestResult {
        let started = Instant::now();
        while !done(self) {
            self.step(feeds);
            if started.elapsed() > DEADLINE {
                return Err(format!(
                    "{what}: not done within {DEADLINE:?} ({} read)",
                    self.read.len()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // ingest's poll interval
        }
        Ok(())
    }
}

async fn reshard_while_reading(fan_out: bool) -> TestResult {
    let local = KinesisLocal::start()?;
    let client = kinesis_client(&local.endpoint, RetryConfig::standard());
    let stream = "pageviews";
    client
        .create_stream()
        .stream_name(stream)
        .shard_count(2)
        .send()
        .await?;
    await_active(&client, stream).await?;
    let mut next_seq = vec![0u64; USERS];
    write(&client, stream, 600, &mut next_seq, 0).await?;

    let settings = ConsumerSettings {
        discovery_interval: Duration::from_secs(1),
        reader: ReaderSettings {
            max_records: 100, // several calls per shard, so the reshard lands mid-read
            ..ReaderSettings::default()
        },
        fan_out: FanOutSettings {
            // kinesis-local's subscriptions go quiet instead of ending a closed shard: notice soon.
            idle_timeout: Duration::from_secs(2),
            ..FanOutSettings::default()
        },
        ..ConsumerSettings::default()
    };
    let (consumer, mut feeds) = KinesisConsumer::start(
        &tokio::runtime::Handle::current(),
        client.clone(),
        vec![StreamSpec {
            portal: "g1".to_string(),
            stream: stream.to_string(),
            fan_out_consumer: fan_out.then(|| "pageflow-test".to_string()),
        }],
        2,
        settings,
    );
    let mut drain = Drain::default();
    drain
        .until(&mut feeds, "the first records", |d| d.read.len() >= 100)
        .await?;

    // Reshard mid-stream: 2 → 4 shards (each parent split in two), then write more.
    client
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(4)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await?;
    let started = Instant::now();
    while client
        .list_shards()
        .stream_name(stream)
        .send()
        .await?
        .shards()
        .len()
        < 6
    {
        if started.elapsed() > DEADLINE {
            return Err("the reshard did not create 4 children".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // a poll's interval
    }
    await_active(&client, stream).await?;
    write(&client, stream, 600, &mut next_seq, 600).await?;

    drain
        .until(&mut feeds, "every record", |d| d.read.len() >= 1200)
        .await?;
    // Nothing more than written arrives (no duplicates) while the shards settle.
    drain
        .until(&mut feeds, "the parents to finish", |d| {
            d.finished.len() >= 2
        })
        .await?;

    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for record in &drain.read {
        let text = String::from_utf8(record.bytes.clone())?;
        assert!(seen.insert(text.clone()), "{text} arrived twice");
        let (user, seq) = text.split_once(':').ok_or("a record without a sequence")?;
        let seq: u64 = seq.parse()?;
        if let Some(previous) = last.insert(user.to_string(), seq) {
            assert!(
                seq == previous + 1,
                "{user}: {seq} arrived after {previous} (order across the reshard broken)"
            );
        } else {
            assert_eq!(seq, 0, "{user}'s first record is its first");
        }
    }
    assert_eq!(seen.len(), 1200, "every record once");
    assert_eq!(
        drain.names.len(),
        6,
        "2 parents and 4 children: {:?}",
        drain.names
    );
    let status = consumer.status.shards();
    assert_eq!(
        status.iter().filter(|s| s.finished).count(),
        2,
        "{status:?}"
    );
    assert!(status.iter().all(|s| s.last_error.is_none()), "{status:?}");
    assert_eq!(status.iter().map(|s| s.records).sum::<u64>(), 1200);
    consumer.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_consumer_keeps_every_users_order_across_a_reshard() -> TestResult {
    reshard_while_reading(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_consumer_keeps_every_users_order_across_a_reshard() -> TestResult {
    reshard_while_reading(true).await
}
