//! The Kinesis features sink and the Firehose archive sink against a real AWS API server on
//! loopback (moto, started per test by `pageflow_tests::aws::MotoServer`): what is written is read
//! back through the same APIs a consumer would use.

use std::collections::BTreeMap;

use aws_sdk_kinesis::config::retry::RetryConfig;
use pageflow_connectors::batch::RetryPolicy;
use pageflow_connectors::firehose_sink::DeliveryStream;
use pageflow_connectors::kinesis::sink::KinesisStream;
use pageflow_tests::aws::MotoServer;
use pageflow_tests::clients::{
    feature_id_of, firehose_client, kinesis_client, lines_of, read_objects, read_stream, s3_client,
};
use pageflow_tests::synthetic_features;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_reach_every_shard_of_the_stream_with_their_partition_keys() -> TestResult {
    let moto = MotoServer::start()?;
    let client = kinesis_client(&moto.endpoint, RetryConfig::standard());
    client
        .create_stream()
        .stream_name("features")
        .shard_count(3)
        .send()
        .await?;
    let features = synthetic_features(4_000, 5);
    assert!(
        features.len() > 1_000,
        "enough records for several PutRecords calls: {}",
        features.len()
    );

    let sink = KinesisStream::with_client(client.clone(), "features");
    let report = sink.write_features(&features, RetryPolicy::default()).await;
    assert_eq!(report.written, features.len());
    assert!(
        report.undeliverable.is_empty() && report.fatal.is_none(),
        "{:?}",
        report.fatal
    );
    assert!(
        report.calls >= features.len().div_ceil(500),
        "at most 500 records per call"
    );

    // Read every shard from the start, as a consumer would.
    let mut read: BTreeMap<String, (String, String)> = BTreeMap::new();
    for record in read_stream(&client, "features").await? {
        read.insert(
            feature_id_of(&record.data)?,
            (record.partition_key, record.shard_id),
        );
    }
    assert_eq!(read.len(), features.len(), "every feature once");
    for feature in &features {
        let (key, _) = read
            .get(feature.feature_id())
            .ok_or("a feature is missing")?;
        assert_eq!(key, feature.partition_key());
    }
    let shards_used: std::collections::BTreeSet<&String> =
        read.values().map(|(_, shard)| shard).collect();
    assert!(
        shards_used.len() > 1,
        "partition keys spread the records over the shards"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_reaches_s3_as_json_lines_through_firehose() -> TestResult {
    let moto = MotoServer::start()?;
    let s3 = s3_client(&moto.endpoint);
    s3.create_bucket().bucket("archive").send().await?;
    let firehose = firehose_client(&moto.endpoint, RetryConfig::standard());
    let destination = aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
        .bucket_arn("arn:aws:s3:::archive")
        .role_arn("arn:aws:iam::123456789012:role/pageflow-firehose")
        .prefix("processed/")
        .build()?;
    firehose
        .create_delivery_stream()
        .delivery_stream_name("pageflow-processed")
        .extended_s3_destination_configuration(destination)
        .send()
        .await?;

    let features = synthetic_features(3_000, 5);
    let lines: Vec<Vec<u8>> = features.iter().map(|f| f.to_json().into_bytes()).collect();
    let sink = DeliveryStream::with_client(firehose, "pageflow-processed");
    let report = sink
        .write_lines(lines.clone(), RetryPolicy::default())
        .await;
    assert_eq!(report.written, lines.len());
    assert!(report.undeliverable.is_empty());

    assert!(
        report.calls < lines.len().div_ceil(500),
        "lines are packed: {} calls for {} lines",
        report.calls,
        lines.len()
    );
    let objects = read_objects(&s3, "archive", "processed/").await?;
    assert!(!objects.is_empty(), "one object per call at least");
    for bytes in &objects {
        assert!(bytes.ends_with(b"\n"), "objects are whole JSON lines");
    }
    let mut archived = lines_of(&objects);
    let mut expected = lines;
    expected.sort();
    archived.sort();
    assert_eq!(
        archived, expected,
        "every feature exactly once, one per line"
    );
    Ok(())
}
