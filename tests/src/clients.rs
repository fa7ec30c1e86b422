//! AWS SDK clients for tests: pointed at a local endpoint (moto, or a fault proxy in front of it),
//! with dummy credentials and an explicit retry configuration.

use aws_config::BehaviorVersion;
use aws_sdk_kinesis::config::Credentials;
use aws_sdk_kinesis::config::retry::RetryConfig;

const REGION: &str = "us-east-1";

/// Credentials the local server accepts (it checks none).
pub fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "pageflow-tests")
}

/// A Kinesis client for `endpoint`.
pub fn kinesis_client(endpoint: &str, retry: RetryConfig) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .retry_config(retry)
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// A Firehose client for `endpoint`.
pub fn firehose_client(endpoint: &str, retry: RetryConfig) -> aws_sdk_firehose::Client {
    let config = aws_sdk_firehose::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_sdk_firehose::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .retry_config(retry)
        .build();
    aws_sdk_firehose::Client::from_conf(config)
}

/// An SQS client for `endpoint`.
pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// An S3 client for `endpoint` (path-style addressing, as local servers need).
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// One record read back from a Kinesis stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// The shard it was in.
    pub shard_id: String,
    /// Its partition key.
    pub partition_key: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Reads every shard of `stream` from the oldest record to the tip, as a consumer would.
pub async fn read_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<Vec<StreamRecord>, Box<dyn std::error::Error>> {
    let mut records = Vec::new();
    let shards = client.list_shards().stream_name(stream).send().await?;
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator;
        while let Some(current) = iterator {
            let page = client
                .get_records()
                .shard_iterator(current)
                .limit(1000)
                .send()
                .await?;
            records.extend(page.records().iter().map(|record| StreamRecord {
                shard_id: shard.shard_id().to_string(),
                partition_key: record.partition_key().unwrap_or_default().to_string(),
                data: record.data().as_ref().to_vec(),
            }));
            iterator = if page.records().is_empty() {
                None
            } else {
                page.next_shard_iterator
            };
        }
    }
    Ok(records)
}

/// The bytes of every object under `prefix` in `bucket`, listing page by page.
pub async fn read_objects(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let listing = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await?;
        for object in listing.contents() {
            let body = s3
                .get_object()
                .bucket(bucket)
                .key(object.key().unwrap_or_default())
                .send()
                .await?
                .body
                .collect()
                .await?;
            objects.push(body.into_bytes().to_vec());
        }
        token = listing.next_continuation_token;
        if token.is_none() {
            return Ok(objects);
        }
    }
}

/// The non-empty lines of `objects`.
pub fn lines_of(objects: &[Vec<u8>]) -> Vec<Vec<u8>> {
    objects
        .iter()
        .flat_map(|bytes| bytes.split(|b| *b == b'\n'))
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The `feature_id` of a feature record's JSON bytes.
pub fn feature_id_of(data: &[u8]) -> Result<String, serde_json::Error> {
    let json: serde_json::Value = serde_json::from_slice(data)?;
    Ok(json["feature_id"].as_str().unwrap_or_default().to_string())
}
