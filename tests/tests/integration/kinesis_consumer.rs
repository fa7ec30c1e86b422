//! The Kinesis source as the job uses it (`KinesisConsumer`: discovery, shard lineage, one
//! partition per shard handed to the workers' feeds), against kinesis-local on loopback, which
//! reshards for real: closed parents end with `ChildShards` and new writes go to the children.
//!
//! The test drains the feeds and partitions the way the ingest operator does, in one thread, and
//! reshards while it reads: every record arrives exactly once, and each user's records arrive in
//! the order they were written, across the reshard, with polling and with enhanced fan-out.
//!
//! A second pair of tests restarts the consumer from what a checkpoint holds ([`SavedShards`]: the
//! last position ingested per shard, the shards read to their end): across the two runs every
//! record arrives exactly once and in each user's order, and finished shards are not read again.
//!
//! The last tests run two consumers as the two processes of a 2 × 1 cluster, told of each other's
//! finished partitions through a shared [`FinishedElsewhere`] (the job's replicated watermark
//! board): across a split while reading, and in a bounded run over a merge, every record arrives
//! exactly once, each shard is read only by its owner's process, a child starts only after all its
//! parents ended in whichever process read them, and a bounded run closes both processes' feeds.
//! A third continues on such a cluster from a one-process checkpoint (1 × 3 → 2 × 1 workers).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ScalingType, StreamStatus};
use pageflow_connectors::kinesis::consumer::{
    ConsumerPlacement, ConsumerSettings, FinishedElsewhere, KinesisConsumer, NowhereElse,
    SavedShards, ShardFeed, StreamSpec,
};
use pageflow_connectors::kinesis::fan_out_reader::FanOutSettings;
use pageflow_connectors::kinesis::kpl::aggregate;
use pageflow_connectors::kinesis::polling_reader::ReaderSettings;
use pageflow_connectors::kinesis::shards::assign_shard;
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

/// Writes `count` user records `user:seq` like [`write`], but every third Kinesis record is a KPL
/// aggregate of three consecutive records of one user (so `count` user records are fewer Kinesis
/// records), keyed by that user.
async fn write_mixed(
    client: &Client,
    stream: &str,
    count: usize,
    next_seq: &mut [u64],
    offset: usize,
) -> TestResult {
    let mut entries = Vec::new();
    let mut written = 0;
    while written < count {
        let user = (entries.len() + offset) % USERS;
        let key = format!("user-{user}");
        let users = if entries.len() % 3 == 2 {
            3.min(count - written)
        } else {
            1
        };
        let records: Vec<Vec<u8>> = (0..users)
            .map(|_| {
                let seq = next_seq[user];
                next_seq[user] += 1;
                format!("user-{user}:{seq}").into_bytes()
            })
            .collect();
        let data = if users == 1 {
            records[0].clone()
        } else {
            let input: Vec<(&str, &[u8])> = records
                .iter()
                .map(|r| (key.as_str(), r.as_slice()))
                .collect();
            aggregate(&input)
        };
        entries.push(
            PutRecordsRequestEntry::builder()
                .partition_key(key)
                .data(Blob::new(data))
                .build()?,
        );
        written += users;
    }
    for chunk in entries.chunks(250) {
        let output = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await?;
        assert_eq!(output.failed_record_count(), Some(0));
    }
    Ok(())
}

/// Reshards `stream` to `target` shards and waits until the listing holds `listed` shards.
async fn reshard(client: &Client, stream: &str, target: i32, listed: usize) -> TestResult {
    client
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(target)
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
        < listed
    {
        if started.elapsed() > DEADLINE {
            return Err(format!("the reshard did not list {listed} shards").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // a poll's interval
    }
    await_active(client, stream).await
}

/// What the test's "ingest" holds: the partitions it was given and what it read, in order.
struct Drain {
    partitions: Vec<Box<dyn RecordSource>>,
    names: BTreeSet<String>,
    finished: BTreeSet<String>,
    read: Vec<RawRecord>,
    /// Records asked for per partition and poll.
    poll_max: usize,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            partitions: Vec::new(),
            names: BTreeSet::new(),
            finished: BTreeSet::new(),
            read: Vec::new(),
            poll_max: 1000,
        }
    }
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
            match partition.poll(self.poll_max, &mut self.read) {
                Ok(PollStatus::Finished) => {
                    self.finished.insert(partition.name().to_string());
                }
                Ok(_) => {}
                Err(error) => panic!("a shard partition failed: {error}"),
            }
        }
    }

    /// What a checkpoint taken now would hold: the last position read per partition, and the
    /// partitions read to their end.
    fn saved(&self) -> SavedShards {
        let mut positions = HashMap::new();
        for record in &self.read {
            positions.insert(
                record.position.partition.clone(),
                record.position.position.clone(),
            );
        }
        SavedShards {
            positions,
            finished: self.finished.iter().cloned().collect(),
        }
    }

    /// Keeps polling for `how_long` (to see that nothing more comes).
    async fn settle(&mut self, feeds: &mut [ShardFeed], how_long: Duration) {
        let started = Instant::now();
        while started.elapsed() < how_long {
            self.step(feeds);
            tokio::time::sleep(Duration::from_millis(20)).await; // ingest's poll interval
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
        ConsumerPlacement::single(2),
        Arc::new(NowhereElse),
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

/// Checks that `records` hold every user's records `0..` exactly once and in order, and returns how
/// many there are.
fn assert_each_user_in_order(records: &[&RawRecord]) -> Result<usize, Box<dyn std::error::Error>> {
    let mut seen = HashSet::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for record in records {
        let text = String::from_utf8(record.bytes.clone())?;
        assert!(
            seen.insert(text.clone()),
            "{text} arrived twice (the second time at {:?})",
            record.position
        );
        let (user, seq) = text.split_once(':').ok_or("a record without a sequence")?;
        let seq: u64 = seq.parse()?;
        let expected = last.get(user).map_or(0, |previous| previous + 1);
        assert_eq!(
            seq, expected,
            "{user}: {seq} arrived where {expected} was due ({:?})",
            record.position
        );
        last.insert(user.to_string(), seq);
    }
    Ok(seen.len())
}

/// Reads part of a resharded stream, stops, restarts from what a checkpoint would hold, and reads
/// the rest: every record once across the two runs, finished parents never read again. A second
/// stream's saved position is garbage: that shard is read from the start and says why.
async fn restart_from_saved_shards(fan_out: bool) -> TestResult {
    let local = KinesisLocal::start()?;
    let client = kinesis_client(&local.endpoint, RetryConfig::standard());
    let stream = "pageviews";
    let other = "other-pageviews";
    for (name, shards) in [(stream, 2), (other, 1)] {
        client
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await?;
        await_active(&client, name).await?;
    }
    let mut next_seq = vec![0u64; USERS];
    write_mixed(&client, stream, 400, &mut next_seq, 0).await?;
    let mut other_seq = vec![0u64; USERS];
    write(&client, other, 50, &mut other_seq, 0).await?;

    let settings = ConsumerSettings {
        discovery_interval: Duration::from_secs(1),
        reader: ReaderSettings {
            max_records: 40, // several calls per shard, so the checkpoint lands mid-shard
            ..ReaderSettings::default()
        },
        fan_out: FanOutSettings {
            idle_timeout: Duration::from_secs(2),
            ..FanOutSettings::default()
        },
        ..ConsumerSettings::default()
    };
    let spec = |portal: &str, name: &str| StreamSpec {
        portal: portal.to_string(),
        stream: name.to_string(),
        fan_out_consumer: fan_out.then(|| "pageflow-test".to_string()),
    };

    // The first run: the parents are read to their end, the children in part.
    let (first, mut feeds) = KinesisConsumer::start(
        &tokio::runtime::Handle::current(),
        client.clone(),
        vec![spec("g1", stream)],
        ConsumerPlacement::single(2),
        Arc::new(NowhereElse),
        settings.clone(),
    );
    // Odd, small polls: the last record taken in is often inside an aggregate.
    let mut before = Drain {
        poll_max: 7,
        ..Drain::default()
    };
    before
        .until(&mut feeds, "the first records", |d| d.read.len() >= 100)
        .await?;
    reshard(&client, stream, 4, 6).await?;
    write_mixed(&client, stream, 400, &mut next_seq, 400).await?;
    before
        .until(&mut feeds, "the parents to finish", |d| {
            d.finished.len() >= 2 && d.read.len() >= 450
        })
        .await?;
    first.stop();
    drop(feeds);
    let saved = before.saved();
    assert_eq!(saved.finished.len(), 2, "{saved:?}");

    // While the job is down, more is written (to the children).
    write_mixed(&client, stream, 300, &mut next_seq, 800).await?;

    // The second run, from the checkpoint; the start would re-read everything if it were used.
    let mut saved_with_garbage = saved.clone();
    saved_with_garbage.positions.insert(
        "kinesis:g2/shardId-000000000000".to_string(),
        "not-a-position".to_string(),
    );
    let (second, mut feeds) = KinesisConsumer::start(
        &tokio::runtime::Handle::current(),
        client.clone(),
        vec![spec("g1", stream), spec("g2", other)],
        ConsumerPlacement::single(2),
        Arc::new(NowhereElse),
        ConsumerSettings {
            saved: saved_with_garbage,
            ..settings
        },
    );
    let mut after = Drain::default();
    let expected = 1100 - before.read.len();
    after
        .until(&mut feeds, "the rest of the records", |d| {
            d.read.len() >= expected + 50
        })
        .await?;
    after.settle(&mut feeds, Duration::from_secs(3)).await;

    for name in &after.names {
        assert!(
            !saved.finished.contains(name),
            "{name} was read to its end before the checkpoint, yet handed out again"
        );
    }
    let (g1_after, g2_after): (Vec<&RawRecord>, Vec<&RawRecord>) = after
        .read
        .iter()
        .partition(|r| r.position.partition.starts_with("kinesis:g1/"));
    let both_runs: Vec<&RawRecord> = before.read.iter().chain(g1_after).collect();
    assert_eq!(
        assert_each_user_in_order(&both_runs)?,
        1100,
        "every record once across the two runs"
    );
    // The shard whose saved position is garbage is read from the start (all of it), and says why.
    assert_eq!(assert_each_user_in_order(&g2_after)?, 50);
    let status = second.status.shards();
    let garbage: Vec<_> = status
        .iter()
        .filter(|s| s.saved_position_error.is_some())
        .collect();
    assert_eq!(garbage.len(), 1, "{status:?}");
    assert_eq!(garbage[0].stream, other);
    assert!(
        garbage[0]
            .saved_position_error
            .as_deref()
            .is_some_and(|e| e.contains("not-a-position") && e.contains("TrimHorizon")),
        "{garbage:?}"
    );
    assert!(
        status.iter().all(|s| !saved
            .finished
            .contains(&format!("kinesis:{}/{}", s.portal, s.shard))),
        "no reader for a finished shard: {status:?}"
    );
    assert_eq!(
        status.len(),
        4 + 1,
        "the 4 children and the other stream's shard"
    );
    second.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_consumer_restarts_from_saved_shards_reading_every_record_once() -> TestResult {
    restart_from_saved_shards(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_consumer_restarts_from_saved_shards_reading_every_record_once() -> TestResult {
    restart_from_saved_shards(true).await
}

/// The test's stand-in for the job's replicated watermark board: the partitions whose end was
/// reported in any process of the cluster.
#[derive(Default)]
struct FinishedBoard(Mutex<HashSet<String>>);

impl FinishedElsewhere for FinishedBoard {
    fn is_finished(&self, partition: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(partition)
    }
}

/// What happened in the cluster, in the order the test saw it (both processes' ingest run on the
/// test's one thread, in turn).
#[derive(Debug)]
enum Seen {
    Started { process: usize, partition: String },
    Read { process: usize, record: RawRecord },
    Finished { process: usize, partition: String },
}

/// The two processes of a 2 × 1 cluster: each one's consumer, feeds and ingest, and one log.
struct Cluster {
    consumers: Vec<KinesisConsumer>,
    feeds: Vec<Vec<ShardFeed>>,
    drains: Vec<Drain>,
    board: Arc<FinishedBoard>,
    log: Vec<Seen>,
}

impl Cluster {
    const PROCESSES: usize = 2;

    fn start(client: &Client, spec: &StreamSpec, settings: &ConsumerSettings) -> Cluster {
        let board = Arc::new(FinishedBoard::default());
        let (consumers, feeds) = (0..Self::PROCESSES)
            .map(|process| {
                KinesisConsumer::start(
                    &tokio::runtime::Handle::current(),
                    client.clone(),
                    vec![spec.clone()],
                    ConsumerPlacement {
                        process,
                        processes: Self::PROCESSES,
                        threads: 1,
                    },
                    Arc::clone(&board) as Arc<dyn FinishedElsewhere>,
                    settings.clone(),
                )
            })
            .unzip();
        Cluster {
            consumers,
            feeds,
            drains: (0..Self::PROCESSES).map(|_| Drain::default()).collect(),
            board,
            log: Vec::new(),
        }
    }

    /// One ingest step in each process, logged; a partition's end goes on the board, as its report
    /// `finished` would reach every process.
    fn step(&mut self) {
        for process in 0..Self::PROCESSES {
            let drain = &mut self.drains[process];
            let (names, read, finished) = (
                drain.names.clone(),
                drain.read.len(),
                drain.finished.clone(),
            );
            drain.step(&mut self.feeds[process]);
            for partition in drain.names.difference(&names) {
                self.log.push(Seen::Started {
                    process,
                    partition: partition.clone(),
                });
            }
            for record in &drain.read[read..] {
                self.log.push(Seen::Read {
                    process,
                    record: record.clone(),
                });
            }
            for partition in drain.finished.difference(&finished) {
                self.log.push(Seen::Finished {
                    process,
                    partition: partition.clone(),
                });
                self.board
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(partition.clone());
            }
        }
    }

    fn read(&self) -> usize {
        self.drains.iter().map(|d| d.read.len()).sum()
    }

    fn finished(&self) -> usize {
        self.drains.iter().map(|d| d.finished.len()).sum()
    }

    fn feeds_closed(&self) -> bool {
        self.feeds
            .iter()
            .all(|feeds| feeds.iter().all(PartitionFeed::is_closed))
    }

    async fn until(&mut self, what: &str, done: impl Fn(&Cluster) -> bool) -> TestResult {
        let started = Instant::now();
        while !done(self) {
            self.step();
            if started.elapsed() > DEADLINE {
                return Err(format!(
                    "{what}: not done within {DEADLINE:?} ({} read)",
                    self.read()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // ingest's poll interval
        }
        Ok(())
    }

    /// Every record read, in the order taken in (either process).
    fn records(&self) -> Vec<&RawRecord> {
        self.log
            .iter()
            .filter_map(|seen| match seen {
                Seen::Read { record, .. } => Some(record),
                _ => None,
            })
            .collect()
    }

    /// Checks what the cluster read of `portal`'s stream against its lineage (`parents` of every
    /// shard; `ended_before` the shards read to their end before this run): every shard not ended
    /// before is started once, by its owner's process, and its records come from there; every
    /// child starts only after all its parents ended (their records taken in), in whichever
    /// process read them. Returns how many parent → child edges cross the two processes.
    fn check(
        &self,
        stream: &str,
        portal: &str,
        parents: &BTreeMap<String, Vec<String>>,
        ended_before: &BTreeSet<String>,
    ) -> Result<usize, Box<dyn std::error::Error>> {
        let prefix = format!("kinesis:{portal}/");
        let mut started: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut finished: BTreeMap<String, usize> = BTreeMap::new();
        for (at, seen) in self.log.iter().enumerate() {
            match seen {
                Seen::Started { process, partition } => {
                    let Some(shard) = partition.strip_prefix(&prefix) else {
                        continue;
                    };
                    assert_eq!(
                        *process,
                        assign_shard(stream, shard, Self::PROCESSES),
                        "{shard} read by a process that does not own it"
                    );
                    assert!(
                        started.insert(shard.to_string(), (*process, at)).is_none(),
                        "{shard} started in two processes"
                    );
                }
                Seen::Read { process, record } => {
                    let Some(shard) = record.position.partition.strip_prefix(&prefix) else {
                        continue;
                    };
                    assert_eq!(
                        started.get(shard).map(|(p, _)| p),
                        Some(process),
                        "a record of {shard} came from a process that did not start it"
                    );
                }
                Seen::Finished { process, partition } => {
                    let Some(shard) = partition.strip_prefix(&prefix) else {
                        continue;
                    };
                    assert_eq!(
                        started.get(shard).map(|(p, _)| p),
                        Some(process),
                        "{shard} ended in a process that did not start it"
                    );
                    assert!(
                        finished.insert(shard.to_string(), at).is_none(),
                        "{shard} ended twice"
                    );
                }
            }
        }
        assert_eq!(
            started.keys().collect::<Vec<_>>(),
            parents
                .keys()
                .filter(|shard| !ended_before.contains(*shard))
                .collect::<Vec<_>>(),
            "every listed shard not ended before is read"
        );
        let mut across = 0;
        for (child, (child_process, child_start)) in &started {
            for parent in &parents[child] {
                if ended_before.contains(parent) {
                    continue;
                }
                let parent_end = finished
                    .get(parent)
                    .ok_or(format!("{parent} (a parent of {child}) never finished"))?;
                assert!(
                    parent_end < child_start,
                    "{child} started before its parent {parent} finished"
                );
                if started[parent].0 != *child_process {
                    across += 1;
                }
            }
        }
        Ok(across)
    }
}

/// Every shard of `stream` with its parents, as listed now.
async fn lineage(
    client: &Client,
    stream: &str,
) -> Result<BTreeMap<String, Vec<String>>, Box<dyn std::error::Error>> {
    let listing = client.list_shards().stream_name(stream).send().await?;
    Ok(listing
        .shards()
        .iter()
        .map(|shard| {
            let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect();
            (shard.shard_id().to_string(), parents)
        })
        .collect())
}

/// A stream name whose shards `shardId-<i>` fall on the processes of a 2 × 1 cluster so that each
/// of the `pairs` of shards is split between the two (the hash decides, so the name is searched).
fn stream_split_over_two_processes(pairs: &[(u32, u32)]) -> String {
    let owner = |stream: &str, i: u32| assign_shard(stream, &format!("shardId-{i:012}"), 2);
    (0..)
        .map(|n| format!("pageviews-{n}"))
        .find(|stream| {
            pairs
                .iter()
                .all(|(a, b)| owner(stream, *a) != owner(stream, *b))
        })
        .unwrap_or_default()
}

/// Two processes of a cluster read one stream while it is split 2 → 4: each reads exactly its
/// own shards, and a child whose parent the other process read starts only once that parent's
/// end reaches it through [`FinishedElsewhere`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_read_every_shard_once_across_a_split() -> TestResult {
    let local = KinesisLocal::start()?;
    let client = kinesis_client(&local.endpoint, RetryConfig::standard());
    // The parents on different processes, and each child pair split too.
    let stream = stream_split_over_two_processes(&[(0, 1), (2, 3), (4, 5)]);
    client
        .create_stream()
        .stream_name(&stream)
        .shard_count(2)
        .send()
        .await?;
    await_active(&client, &stream).await?;
    let mut next_seq = vec![0u64; USERS];
    write(&client, &stream, 600, &mut next_seq, 0).await?;

    let settings = ConsumerSettings {
        discovery_interval: Duration::from_secs(1),
        finished_elsewhere_interval: Duration::from_millis(100),
        reader: ReaderSettings {
            max_records: 100, // several calls per shard, so the reshard lands mid-read
            ..ReaderSettings::default()
        },
        ..ConsumerSettings::default()
    };
    let spec = StreamSpec {
        portal: "g1".to_string(),
        stream: stream.clone(),
        fan_out_consumer: None,
    };
    let mut cluster = Cluster::start(&client, &spec, &settings);
    cluster
        .until("the first records", |c| c.read() >= 100)
        .await?;
    reshard(&client, &stream, 4, 6).await?;
    write(&client, &stream, 600, &mut next_seq, 600).await?;
    cluster
        .until("every record and the parents' ends", |c| {
            c.read() >= 1200 && c.finished() >= 2
        })
        .await?;

    let parents = lineage(&client, &stream).await?;
    assert_eq!(parents.len(), 6, "2 parents and 4 children: {parents:?}");
    assert_eq!(assert_each_user_in_order(&cluster.records())?, 1200);
    let across = cluster.check(&stream, "g1", &parents, &BTreeSet::new())?;
    assert!(
        across > 0,
        "a child waited for a parent of the other process"
    );
    for (process, consumer) in cluster.consumers.iter().enumerate() {
        let status = consumer.status.shards();
        assert!(
            status
                .iter()
                .all(|s| assign_shard(&stream, &s.shard, 2) == process),
            "process {process} has readers only for its own shards: {status:?}"
        );
        assert!(status.iter().all(|s| s.last_error.is_none()), "{status:?}");
    }
    Ok(())
}

/// A bounded run (`stop_at_latest`) of a 2-process cluster over a stream whose two shards, on
/// different processes, were merged into one: the child waits for both parents across the
/// processes, every record is read once, and both processes' feeds close once every shard is done
/// somewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_end_a_bounded_run_over_a_merge() -> TestResult {
    let local = KinesisLocal::start()?;
    let client = kinesis_client(&local.endpoint, RetryConfig::standard());
    let stream = stream_split_over_two_processes(&[(0, 1)]);
    client
        .create_stream()
        .stream_name(&stream)
        .shard_count(2)
        .send()
        .await?;
    await_active(&client, &stream).await?;
    let mut next_seq = vec![0u64; USERS];
    write(&client, &stream, 400, &mut next_seq, 0).await?;
    client
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge("shardId-000000000000")
        .adjacent_shard_to_merge("shardId-000000000001")
        .send()
        .await?;
    await_active(&client, &stream).await?;
    write(&client, &stream, 400, &mut next_seq, 400).await?;
    let parents = lineage(&client, &stream).await?;
    assert_eq!(parents.len(), 3, "2 parents and their child: {parents:?}");

    let settings = ConsumerSettings {
        discovery_interval: Duration::from_secs(1),
        finished_elsewhere_interval: Duration::from_millis(100),
        stop_at_latest: true,
        reader: ReaderSettings {
            max_records: 50,
            ..ReaderSettings::default()
        },
        ..ConsumerSettings::default()
    };
    let spec = StreamSpec {
        portal: "g1".to_string(),
        stream: stream.clone(),
        fan_out_consumer: None,
    };
    let mut cluster = Cluster::start(&client, &spec, &settings);
    cluster
        .until("both processes' feeds to close", Cluster::feeds_closed)
        .await?;
    assert_eq!(assert_each_user_in_order(&cluster.records())?, 800);
    let across = cluster.check(&stream, "g1", &parents, &BTreeSet::new())?;
    assert_eq!(
        across, 1,
        "the child waited for its parent on the other process"
    );
    assert_eq!(cluster.finished(), 3, "every shard ended");
    Ok(())
}

/// Restore onto another shape: one process with three workers reads part of a split stream and
/// stops; a 2 × 1 cluster continues from what its checkpoint would hold. The saved positions are
/// used by whichever process now owns each shard, the finished parents are read by neither, and
/// across both runs every record arrives exactly once and in each user's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_continues_from_a_one_process_checkpoint() -> TestResult {
    let local = KinesisLocal::start()?;
    let client = kinesis_client(&local.endpoint, RetryConfig::standard());
    let stream = stream_split_over_two_processes(&[(0, 1), (2, 3), (4, 5)]);
    client
        .create_stream()
        .stream_name(&stream)
        .shard_count(2)
        .send()
        .await?;
    await_active(&client, &stream).await?;
    let mut next_seq = vec![0u64; USERS];
    write_mixed(&client, &stream, 400, &mut next_seq, 0).await?;
    let settings = ConsumerSettings {
        discovery_interval: Duration::from_secs(1),
        finished_elsewhere_interval: Duration::from_millis(100),
        reader: ReaderSettings {
            max_records: 40, // several calls per shard, so the checkpoint lands mid-shard
            ..ReaderSettings::default()
        },
        ..ConsumerSettings::default()
    };
    let spec = StreamSpec {
        portal: "g1".to_string(),
        stream: stream.clone(),
        fan_out_consumer: None,
    };

    // One process of three workers (so shards move between workers on restore): the parents are
    // read to their end, the children in part.
    let (first, mut feeds) = KinesisConsumer::start(
        &tokio::runtime::Handle::current(),
        client.clone(),
        vec![spec.clone()],
        ConsumerPlacement::single(3),
        Arc::new(NowhereElse),
        settings.clone(),
    );
    let mut before = Drain {
        poll_max: 7,
        ..Drain::default()
    };
    before
        .until(&mut feeds, "the first records", |d| d.read.len() >= 100)
        .await?;
    reshard(&client, &stream, 4, 6).await?;
    write_mixed(&client, &stream, 400, &mut next_seq, 400).await?;
    before
        .until(&mut feeds, "the parents to finish", |d| {
            d.finished.len() >= 2 && d.read.len() >= 450
        })
        .await?;
    first.stop();
    drop(feeds);
    let saved = before.saved();
    assert_eq!(saved.finished.len(), 2, "{saved:?}");
    write_mixed(&client, &stream, 300, &mut next_seq, 800).await?;

    // Two processes, from the checkpoint, to the tip.
    let mut cluster = Cluster::start(
        &client,
        &spec,
        &ConsumerSettings {
            saved: saved.clone(),
            stop_at_latest: true,
            ..settings
        },
    );
    cluster
        .until("both processes' feeds to close", Cluster::feeds_closed)
        .await?;

    let both_runs: Vec<&RawRecord> = before.read.iter().chain(cluster.records()).collect();
    assert_eq!(
        assert_each_user_in_order(&both_runs)?,
        1100,
        "every record once across the two runs"
    );
    let ended_before: BTreeSet<String> = saved
        .finished
        .iter()
        .filter_map(|name| name.strip_prefix("kinesis:g1/"))
        .map(str::to_string)
        .collect();
    let parents = lineage(&client, &stream).await?;
    cluster.check(&stream, "g1", &parents, &ended_before)?;
    let moved = saved
        .positions
        .keys()
        .filter(|name| !saved.finished.contains(*name))
        .filter_map(|name| name.strip_prefix("kinesis:g1/"))
        .filter(|shard| assign_shard(&stream, shard, 3) != assign_shard(&stream, shard, 2))
        .count();
    assert!(
        moved > 0,
        "some child continues from a saved position on another worker: {saved:?}"
    );
    for (process, consumer) in cluster.consumers.iter().enumerate() {
        let status = consumer.status.shards();
        assert!(
            status.iter().all(|s| s.saved_position_error.is_none()),
            "{status:?}"
        );
        assert_eq!(
            status.len(),
            (2..6)
                .filter(|i| assign_shard(&stream, &format!("shardId-{i:012}"), 2) == process)
                .count(),
            "process {process} reads only its own children: {status:?}"
        );
    }
    Ok(())
}
