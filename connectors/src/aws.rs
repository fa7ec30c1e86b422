//! AWS plumbing shared by the Kinesis and Firehose connectors: client configuration and the
//! classification of SDK errors into "a retry may help" or not.

use aws_config::BehaviorVersion;
use serde::{Deserialize, Serialize};

/// Where the AWS APIs are: the job's `[aws]` section.
///
/// Credentials come from the SDK's usual chain (environment, profile, the ECS task role).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// The region, e.g. `sa-east-1`; when absent, the SDK's usual chain (`AWS_REGION`, profile)
    /// decides.
    pub region: Option<String>,
    /// An endpoint URL for every service (a local emulator such as moto); when absent, the real AWS
    /// endpoints (or `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` from the environment).
    pub endpoint_url: Option<String>,
    /// An endpoint URL for Kinesis only (e.g. kinesis-local beside moto); wins over `endpoint_url`.
    pub kinesis_endpoint_url: Option<String>,
}

impl AwsConfig {
    /// The SDK configuration: credentials and region from the usual chain, overridden by this.
    pub async fn load(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        loader.load().await
    }

    /// A Kinesis client for `sdk` (from [`Self::load`]), at `kinesis_endpoint_url` when set.
    pub fn kinesis_client(&self, sdk: &aws_config::SdkConfig) -> aws_sdk_kinesis::Client {
        let mut builder = aws_sdk_kinesis::config::Builder::from(sdk);
        if let Some(url) = &self.kinesis_endpoint_url {
            builder = builder.endpoint_url(url);
        }
        aws_sdk_kinesis::Client::from_conf(builder.build())
    }

    /// An SQS client for `sdk` (from [`Self::load`]) with the SDK's retries switched off and each
    /// attempt bounded by `attempt_timeout`: the collector answers its clients within seconds, and
    /// retries itself ([`crate::sqs_buffer::SqsBuffer::send`]).
    pub fn sqs_client(
        &self,
        sdk: &aws_config::SdkConfig,
        attempt_timeout: std::time::Duration,
    ) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::config::Builder::from(sdk)
            .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(attempt_timeout)
                    .build(),
            )
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// An Amazon Personalize runtime client (`GetRecommendations`) for `sdk` (from [`Self::load`]),
    /// with the SDK's retries switched off: recommendations are asked for within a budget of a
    /// few hundred milliseconds, which a second attempt cannot fit in (see
    /// [`crate::personalize::Recommender`]).
    pub fn personalize_runtime_client(
        &self,
        sdk: &aws_config::SdkConfig,
    ) -> aws_sdk_personalizeruntime::Client {
        let config = aws_sdk_personalizeruntime::config::Builder::from(sdk)
            .retry_config(aws_sdk_personalizeruntime::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_personalizeruntime::Client::from_conf(config)
    }

    /// An Amazon Personalize events client (`PutEvents`) for `sdk` (from [`Self::load`]), with
    /// the SDK's retries switched off: [`crate::personalize::EventForwarder`] retries itself,
    /// paced under the tracker's quota.
    pub fn personalize_events_client(
        &self,
        sdk: &aws_config::SdkConfig,
    ) -> aws_sdk_personalizeevents::Client {
        let config = aws_sdk_personalizeevents::config::Builder::from(sdk)
            .retry_config(aws_sdk_personalizeevents::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_personalizeevents::Client::from_conf(config)
    }
}

/// Error codes of Kinesis, Firehose and S3 after which the same request may succeed later.
pub fn retryable_service_code(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "ThrottlingException"
            | "KMSThrottlingException"
            | "InternalFailure"
            | "InternalFailureException"
            | "ServiceUnavailableException"
            | "ServiceUnavailable"
            | "RequestTimeout"
            | "RequestTimeoutException"
            // S3's names for throttling and transient server trouble.
            | "SlowDown"
            | "InternalError"
            | "OperationAborted"
            | "ConditionalRequestConflict"
            | "Throttling"
            | "RequestLimitExceeded"
            | "TooManyRequests"
    )
}

/// Classifies an SDK error: transport failures and throttling are retryable, a missing stream or
/// a permission problem is not.
pub fn classify<E, R>(error: &aws_sdk_kinesis::error::SdkError<E, R>) -> (String, bool)
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kinesis::error::SdkError;
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_string();
            let message = service.err().message().unwrap_or_default().to_string();
            let retryable = retryable_service_code(&code);
            (format!("{code}: {message}"), retryable)
        }
        SdkError::TimeoutError(_) => ("the request timed out".to_string(), true),
        SdkError::DispatchFailure(failure) => {
            (format!("the request could not be sent: {failure:?}"), true)
        }
        SdkError::ResponseError(_) => ("the response could not be read".to_string(), true),
        other => (format!("{other}"), false),
    }
}
