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
