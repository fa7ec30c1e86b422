//! The shard reader against a real Kinesis API on loopback (moto): order, KPL de-aggregation with
//! sub-sequence positions, corrupt aggregates, resuming after the last emitted user record (inside
//! an aggregate or after a whole record) without re-emitting anything, and the per-shard call rate.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use pageflow_connectors::kinesis::kpl::aggregate;
use pageflow_connectors::kinesis::polling_reader::{PollingReader, ReaderSettings};
use pageflow_connectors::kinesis::shard_reader::{ResumePoint, ShardRecord, StartPosition};
use pageflow_tests::aws::MotoServer;
use pageflow_tests::clients::kinesis_client;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Writes, in order: 100 plain records, an aggregate of 50, 100 plain, a corrupt aggregate, an
/// aggregate of 50, 100 plain. Returns the user payloads expected, in order (the corrupt one as is).
async fn fill(
    client: &aws_sdk_kinesis::Client,
) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    client
        .create_stream()
        .stream_name("g1")
        .shard_count(1)
        .send()
        .await?;
    let mut expected = Vec::new();
    let mut entries = Vec::new();
    let plain = |n: usize| format!("{{\"n\":{n}}}").into_bytes();
    let mut n = 0;
    let mut push_plain = |entries: &mut Vec<PutRecordsRequestEntry>,
                          expected: &mut Vec<Vec<u8>>|
     -> Result<(), Box<dyn std::error::Error>> {
        for _ in 0..100 {
            n += 1;
            expected.push(plain(n));
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key("u")
                    .data(Blob::new(plain(n)))
                    .build()?,
            );
        }
        Ok(())
    };
    let packed = |base: usize| -> (Vec<u8>, Vec<Vec<u8>>) {
        let users: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("{{\"agg\":{}}}", base + i).into_bytes())
            .collect();
        let input: Vec<(&str, &[u8])> = users.iter().map(|u| ("u", u.as_slice())).collect();
        (aggregate(&input), users)
    };
    push_plain(&mut entries, &mut expected)?;
    let (first, users) = packed(1_000);
    expected.extend(users);
    entries.push(
        PutRecordsRequestEntry::builder()
            .partition_key("u")
            .data(Blob::new(first))
            .build()?,
    );
    push_plain(&mut entries, &mut expected)?;
    let mut corrupt = aggregate(&[("u", b"damaged".as_slice())]);
    corrupt[6] ^= 0xff;
    expected.push(corrupt.clone());
    entries.push(
        PutRecordsRequestEntry::builder()
            .partition_key("u")
            .data(Blob::new(corrupt))
            .build()?,
    );
    let (second, users) = packed(2_000);
    expected.extend(users);
    entries.push(
        PutRecordsRequestEntry::builder()
            .partition_key("u")
            .data(Blob::new(second))
            .build()?,
    );
    push_plain(&mut entries, &mut expected)?;
    for chunk in entries.chunks(100) {
        let output = client
            .put_records()
            .stream_name("g1")
            .set_records(Some(chunk.to_vec()))
            .send()
            .await?;
        assert_eq!(output.failed_record_count(), Some(0));
    }
    Ok(expected)
}

/// A one-shard stream `g1` filled by [`fill`]: its client, its shard, the payloads expected.
async fn filled_shard(
    moto: &MotoServer,
) -> Result<(aws_sdk_kinesis::Client, String, Vec<Vec<u8>>), Box<dyn std::error::Error>> {
    let client = kinesis_client(&moto.endpoint, RetryConfig::standard());
    let expected = fill(&client).await?;
    let shards = client.list_shards().stream_name("g1").send().await?;
    let shard = shards
        .shards()
        .first()
        .ok_or("the stream has a shard")?
        .shard_id()
        .to_string();
    Ok((client, shard, expected))
}

fn quick() -> ReaderSettings {
    ReaderSettings {
        max_records: 37,
        min_call_interval: Duration::from_millis(20),
        ..ReaderSettings::default()
    }
}

/// Reads until the reader is caught up (an empty batch at the tip).
async fn read_all(
    reader: &mut PollingReader,
) -> Result<Vec<ShardRecord>, Box<dyn std::error::Error>> {
    let mut records = Vec::new();
    loop {
        let batch = reader.next_batch().await?;
        let caught_up = batch.records.is_empty() && batch.millis_behind_latest.unwrap_or(0) == 0;
        records.extend(batch.records);
        if caught_up {
            return Ok(records);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_in_order_unpacks_aggregates_and_flags_corrupt_ones() -> TestResult {
    let moto = MotoServer::start()?;
    let (client, shard, expected) = filled_shard(&moto).await?;
    let mut reader = PollingReader::new(
        client,
        "g1",
        &shard,
        StartPosition::TrimHorizon,
        None,
        quick(),
    );
    let records = read_all(&mut reader).await?;
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.data.as_slice()).collect();
    let expected: Vec<&[u8]> = expected.iter().map(Vec::as_slice).collect();
    assert_eq!(payloads, expected, "every user record once, in order");
    assert!(
        records.windows(2).all(|w| w[0].position < w[1].position),
        "positions strictly increase"
    );
    let corrupt: Vec<&ShardRecord> = records.iter().filter(|r| r.corrupt.is_some()).collect();
    assert_eq!(corrupt.len(), 1);
    let subs: Vec<u64> = records
        .iter()
        .filter(|r| r.data.starts_with(b"{\"agg\":1"))
        .map(|r| r.position.sub_sequence)
        .collect();
    assert_eq!(
        subs,
        (0..50).collect::<Vec<u64>>(),
        "user records carry their index in the aggregate"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_the_last_emitted_user_record_and_never_repeats_it() -> TestResult {
    let moto = MotoServer::start()?;
    let (client, shard, _) = filled_shard(&moto).await?;
    let mut first = PollingReader::new(
        client.clone(),
        "g1",
        &shard,
        StartPosition::TrimHorizon,
        None,
        quick(),
    );
    let all = read_all(&mut first).await?;

    for stop in [120, 149, 150, 200] {
        // Resume as if the job had emitted records 0..=stop before it stopped.
        let record_complete = all
            .get(stop + 1)
            .is_none_or(|next| next.position.sequence != all[stop].position.sequence);
        let resume = ResumePoint {
            position: all[stop].position.clone(),
            record_complete,
        };
        let mut again = PollingReader::new(
            client.clone(),
            "g1",
            &shard,
            StartPosition::TrimHorizon,
            Some(resume),
            quick(),
        );
        let rest = read_all(&mut again).await?;
        assert_eq!(
            rest,
            all[stop + 1..].to_vec(),
            "resuming after record {stop} (complete: {record_complete})"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_one_shard_are_spaced_by_the_rate_limit() -> TestResult {
    let moto = MotoServer::start()?;
    let (client, shard, _) = filled_shard(&moto).await?;
    let settings = ReaderSettings {
        max_records: 10,
        min_call_interval: Duration::from_millis(200),
        ..ReaderSettings::default()
    };
    let mut reader = PollingReader::new(
        client,
        "g1",
        &shard,
        StartPosition::TrimHorizon,
        None,
        settings,
    );
    // Measured from before the first call: the interval runs from each call's start, so the
    // fourth call starts at least three intervals after the first one started.
    let started = Instant::now();
    reader.next_batch().await?;
    for _ in 0..3 {
        reader.next_batch().await?;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "four calls span at least three intervals"
    );
    Ok(())
}
