//! `pageflow aws setup` and `pageflow aws put`: what a demo or a test against the local emulators
//! (or a sandbox account) needs before `pageflow run` in AWS mode.
//!
//! - `setup` creates, from the configuration, every portal's stream, the features stream, the
//!   archive bucket and the three Firehose delivery streams (`raw/`, `processed/`, `dead-letter/`
//!   prefixes). It is idempotent: what exists is kept. Production accounts should manage these
//!   with infrastructure as code (`deploy/`); this command is for emulators and experiments.
//! - `put` publishes a JSON-lines file of pageviews into the portals' streams, as the beacon
//!   collectors would: each line to its portal's stream with `user_id` as the partition key (so a
//!   user's pageviews stay in order on one shard). Lines that are not pageviews of a configured
//!   portal go to the first stream, keyed by their hash, so that the job's dead-letter output sees
//!   them.

use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::StreamStatus;
use pageflow_connectors::aws::classify;
use pageflow_connectors::batch::{OutRecord, RetryPolicy, deliver};
use pageflow_connectors::kinesis::sink::KinesisStream;
use pageflow_dataflow::ids::stable_hash;

use crate::config::{JobConfig, SinksKind, SourceKind};

/// What `setup` creates beside the streams named in the configuration.
#[derive(Clone, Debug)]
pub struct SetupOptions {
    /// Shards of every stream it creates.
    pub shards: i32,
    /// The archive's S3 bucket.
    pub bucket: String,
    /// The role Firehose assumes to write the bucket (see `deploy/iam`).
    pub firehose_role_arn: String,
}

struct Clients {
    kinesis: aws_sdk_kinesis::Client,
    firehose: aws_sdk_firehose::Client,
    s3: aws_sdk_s3::Client,
}

async fn clients(config: &JobConfig) -> Clients {
    let sdk = config.aws.load().await;
    Clients {
        kinesis: config.aws.kinesis_client(&sdk),
        firehose: aws_sdk_firehose::Client::new(&sdk),
        // Emulators serve buckets by path, not by host name.
        s3: aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        ),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for the AWS calls")
}

/// `pageflow aws setup`: creates what the configuration names; returns what it created.
pub fn setup(config: &JobConfig, options: &SetupOptions) -> Result<Vec<String>> {
    runtime()?.block_on(async {
        let clients = clients(config).await;
        let mut created = Vec::new();
        let mut streams: Vec<String> = Vec::new();
        if config.source.kind == SourceKind::Kinesis {
            streams.extend(
                config
                    .source
                    .kinesis
                    .streams
                    .iter()
                    .map(|s| s.stream.clone()),
            );
        }
        if config.sinks.kind == SinksKind::Aws {
            streams.push(config.sinks.kinesis.stream.clone());
        }
        for stream in &streams {
            if create_stream(&clients.kinesis, stream, options.shards).await? {
                created.push(format!("kinesis stream {stream}"));
            }
        }
        for stream in &streams {
            wait_active(&clients.kinesis, stream).await?;
        }
        if config.sinks.kind == SinksKind::Aws && config.sinks.archive {
            if create_bucket(&clients.s3, &options.bucket).await? {
                created.push(format!("s3 bucket {}", options.bucket));
            }
            let firehose = &config.sinks.firehose;
            for (name, prefix) in [
                (&firehose.raw, "raw/"),
                (&firehose.processed, "processed/"),
                (&firehose.dead_letter, "dead-letter/"),
            ] {
                if create_delivery_stream(&clients.firehose, name, prefix, options).await? {
                    created.push(format!(
                        "firehose delivery stream {name} -> s3://{}/{prefix}",
                        options.bucket
                    ));
                }
            }
        }
        Ok(created)
    })
}

async fn create_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shards: i32,
) -> Result<bool> {
    if stream.starts_with("arn:") {
        return Ok(false); // an ARN names a stream that exists elsewhere
    }
    let result = client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await;
    created(result, &["ResourceInUseException"], || {
        format!("the Kinesis stream {stream}")
    })
}

/// `Ok(true)` when a create call created its resource, `Ok(false)` when it failed only because the
/// resource exists (one of `exists_codes`), else what went wrong.
fn created<T, E, R>(
    result: Result<T, aws_sdk_kinesis::error::SdkError<E, R>>,
    exists_codes: &[&str],
    what: impl Fn() -> String,
) -> Result<bool>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(error) => {
            let code = error.as_service_error().and_then(|e| e.code());
            if code.is_some_and(|code| exists_codes.contains(&code)) {
                Ok(false)
            } else {
                Err(anyhow!(
                    "cannot create {}: {}; check [aws] and the credentials",
                    what(),
                    classify(&error).0
                ))
            }
        }
    }
}

async fn wait_active(client: &aws_sdk_kinesis::Client, stream: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let request = client.describe_stream_summary();
        let request = if stream.starts_with("arn:") {
            request.stream_arn(stream)
        } else {
            request.stream_name(stream)
        };
        let status = request
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot describe the Kinesis stream {stream}: {}",
                    classify(&e).0
                )
            })?
            .stream_description_summary
            .map(|s| s.stream_status);
        if status == Some(StreamStatus::Active) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the Kinesis stream {stream} is not ACTIVE after 2 minutes (status {status:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<bool> {
    // In us-east-1, CreateBucket answers 200 for a bucket the caller already owns: ask first.
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(false);
    }
    let result = client.create_bucket().bucket(bucket).send().await;
    created(
        result,
        &["BucketAlreadyOwnedByYou", "BucketAlreadyExists"],
        || format!("the S3 bucket {bucket}"),
    )
}

async fn create_delivery_stream(
    client: &aws_sdk_firehose::Client,
    name: &str,
    prefix: &str,
    options: &SetupOptions,
) -> Result<bool> {
    let destination = aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
        .bucket_arn(format!("arn:aws:s3:::{}", options.bucket))
        .role_arn(&options.firehose_role_arn)
        .prefix(prefix)
        .error_output_prefix(format!("errors/{prefix}"))
        .build()
        .map_err(|e| anyhow!("invalid delivery stream settings for {name}: {e}"))?;
    let result = client
        .create_delivery_stream()
        .delivery_stream_name(name)
        .extended_s3_destination_configuration(destination)
        .send()
        .await;
    created(result, &["ResourceInUseException"], || {
        format!("the Firehose delivery stream {name}")
    })
}

/// `pageflow aws put`: publishes `input` into the portals' streams; returns the records written.
pub fn put(config: &JobConfig, input: &Path) -> Result<usize> {
    let streams = &config.source.kinesis.streams;
    if config.source.kind != SourceKind::Kinesis || streams.is_empty() {
        bail!(
            "`pageflow aws put` needs [source] kind = \"kinesis\" with [[source.kinesis.streams]]"
        );
    }
    let file = std::fs::File::open(input)
        .with_context(|| format!("cannot open {}: check the path", input.display()))?;
    let mut by_stream: Vec<Vec<OutRecord>> = streams.iter().map(|_| Vec::new()).collect();
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", input.display()))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line).to_vec();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: Option<(String, String)> = serde_json::from_slice::<serde_json::Value>(&line)
            .ok()
            .and_then(|json| {
                Some((
                    json.get("portal")?.as_str()?.to_string(),
                    json.get("user_id")?.as_str()?.to_string(),
                ))
            });
        let (index, key) = match parsed {
            Some((portal, user)) => match streams.iter().position(|s| s.portal == portal) {
                Some(index) if !user.is_empty() && user.len() <= 256 => (index, user),
                _ => (0, format!("{:016x}", stable_hash([line.as_slice()]))),
            },
            None => (0, format!("{:016x}", stable_hash([line.as_slice()]))),
        };
        by_stream[index].push(OutRecord {
            partition_key: key,
            data: line,
        });
    }
    runtime()?.block_on(async {
        let clients = clients(config).await;
        let mut written = 0;
        for (spec, records) in streams.iter().zip(by_stream) {
            let stream = KinesisStream::with_client(clients.kinesis.clone(), &spec.stream);
            let delivery = deliver(&stream, records, RetryPolicy::default()).await;
            written += delivery.written;
            if let Some(fatal) = delivery.fatal {
                bail!("cannot write to the stream {}: {fatal}", spec.stream);
            }
            if !delivery.undeliverable.is_empty() {
                bail!(
                    "{} records could not be written to {} (first: {})",
                    delivery.undeliverable.len(),
                    spec.stream,
                    delivery.undeliverable[0].1
                );
            }
        }
        Ok(written)
    })
}
