//! Recommendations from Amazon Personalize (`GetRecommendations`), within a time budget and behind
//! a circuit breaker.
//!
//! The serving layer asks on the request path, so an answer that comes late is worth nothing: the
//! whole call, from the first byte sent to the last one read, gets one budget (150 ms by default)
//! and the SDK's own retries are switched off for this client, since a second attempt cannot fit
//! in the budget anyway. Every failure (timeout, throttling, a 5xx, a transport error, and also a
//! missing campaign or an input Personalize refuses, which are configuration problems that would
//! otherwise burn the budget on every request) counts against the [`CircuitBreaker`]; once it
//! opens, [`Recommender::recommend`] answers [`ConnectorError::PersonalizeBreakerOpen`] at once
//! without calling, and the caller serves its fallback.
//!
//! The quota this protects: the Personalize developer guide's quota page
//! (<https://docs.aws.amazon.com/personalize/latest/dg/limits.html>; the figures as published in
//! its source, `awsdocs/amazon-personalize-developer-guide`, `doc_source/limits.md`) gives 500
//! `GetRecommendations` requests per second per campaign and 2,500/s overall; retrying throttled
//! requests only digs deeper. Check the account's current values in the Service Quotas console.
//!
//! Each outcome has a short label ([`RecommendOutcome::as_str`]) for a metrics counter.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_sdk_personalizeruntime::Client;
use aws_sdk_personalizeruntime::config::retry::RetryConfig;
use aws_sdk_personalizeruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_personalizeruntime::operation::get_recommendations::{
    GetRecommendationsError, GetRecommendationsOutput,
};

use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::ConnectorError;
use crate::aws::retryable_service_code;

/// The most results `GetRecommendations` returns (its `numResults` range is 0 to 500).
pub const MAX_NUM_RESULTS: u32 = 500;

/// What to ask: a custom campaign or a domain recommender.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecommendationSource {
    /// A campaign ARN (`arn:aws:personalize:REGION:ACCOUNT:campaign/NAME`).
    Campaign(String),
    /// A recommender ARN (`arn:aws:personalize:REGION:ACCOUNT:recommender/NAME`).
    Recommender(String),
}

impl RecommendationSource {
    /// The ARN.
    pub fn arn(&self) -> &str {
        match self {
            RecommendationSource::Campaign(arn) | RecommendationSource::Recommender(arn) => arn,
        }
    }
}

/// One `GetRecommendations` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecommendationRequest {
    /// The campaign or recommender to ask.
    pub source: RecommendationSource,
    /// The reader.
    pub user_id: String,
    /// How many items to return, 1 to [`MAX_NUM_RESULTS`].
    pub num_results: u32,
    /// A filter (`arn:aws:personalize:…:filter/NAME`), e.g. to keep one portal's articles.
    pub filter_arn: Option<String>,
    /// Values of the filter's placeholders, e.g. `PORTAL` → `"\"g1\""` (Personalize expects each
    /// value as it appears in the expression: quoted strings, comma-separated for `IN`).
    pub filter_values: BTreeMap<String, String>,
}

impl RecommendationRequest {
    /// A request for `num_results` items for `user_id` from `source`, without a filter.
    pub fn new(source: RecommendationSource, user_id: &str, num_results: u32) -> Self {
        RecommendationRequest {
            source,
            user_id: user_id.to_string(),
            num_results,
            filter_arn: None,
            filter_values: BTreeMap::new(),
        }
    }

    /// The same request with a filter and its values.
    pub fn with_filter(
        mut self,
        filter_arn: &str,
        values: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        self.filter_arn = Some(filter_arn.to_string());
        self.filter_values = values.into_iter().collect();
        self
    }

    /// What this request is, for error messages.
    fn describe(&self) -> String {
        let source = match &self.source {
            RecommendationSource::Campaign(arn) => format!("campaign {arn}"),
            RecommendationSource::Recommender(arn) => format!("recommender {arn}"),
        };
        format!(
            "GetRecommendations from {source} for user {:?}",
            self.user_id
        )
    }

    /// The problems Personalize would refuse the request for, found before calling it.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.user_id.is_empty() {
            problems.push("the user id is empty; pass the reader's id".to_string());
        }
        if self.source.arn().is_empty() {
            problems.push("the campaign or recommender ARN is empty; configure it".to_string());
        }
        if self.num_results == 0 || self.num_results > MAX_NUM_RESULTS {
            problems.push(format!(
                "num_results is {}; ask for 1 to {MAX_NUM_RESULTS} items",
                self.num_results
            ));
        }
        if self.filter_arn.is_none() && !self.filter_values.is_empty() {
            problems.push("filter values are given without a filter ARN; set both".to_string());
        }
        problems
    }
}

/// One recommended item.
#[derive(Clone, Debug, PartialEq)]
pub struct RecommendedItem {
    /// The item (for pageflow, an article id).
    pub item_id: String,
    /// Personalize's score, when the recipe gives one.
    pub score: Option<f64>,
}

/// Personalize's answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recommendations {
    /// The id Personalize gave this answer; send it back with the events it leads to, for
    /// attribution.
    pub recommendation_id: Option<String>,
    /// The items, best first.
    pub items: Vec<RecommendedItem>,
}

impl From<GetRecommendationsOutput> for Recommendations {
    fn from(output: GetRecommendationsOutput) -> Self {
        Recommendations {
            items: output
                .item_list()
                .iter()
                .filter_map(|item| {
                    Some(RecommendedItem {
                        item_id: item.item_id()?.to_string(),
                        score: item.score(),
                    })
                })
                .collect(),
            recommendation_id: output.recommendation_id,
        }
    }
}

/// How a [`Recommender::recommend`] call ended, as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecommendOutcome {
    /// Personalize answered.
    Ok,
    /// No answer within the budget.
    Timeout,
    /// Personalize throttled the call.
    Throttled,
    /// The campaign, recommender or filter does not exist (in this region).
    NotFound,
    /// Personalize (or the request check before calling it) refused the input.
    InvalidInput,
    /// Any other failure: a 5xx, a transport error, an unexpected answer.
    Error,
    /// Not called: the circuit breaker is open.
    BreakerOpen,
}

impl RecommendOutcome {
    /// `ok`, `timeout`, `throttled`, `not_found`, `invalid_input`, `error` or `breaker_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecommendOutcome::Ok => "ok",
            RecommendOutcome::Timeout => "timeout",
            RecommendOutcome::Throttled => "throttled",
            RecommendOutcome::NotFound => "not_found",
            RecommendOutcome::InvalidInput => "invalid_input",
            RecommendOutcome::Error => "error",
            RecommendOutcome::BreakerOpen => "breaker_open",
        }
    }

    /// The outcome of a `recommend` result.
    pub fn of<T>(result: &Result<T, ConnectorError>) -> Self {
        match result {
            Ok(_) => RecommendOutcome::Ok,
            Err(error) => Self::of_error(error),
        }
    }

    /// The outcome an error stands for (`error` for errors that are not Personalize's).
    pub fn of_error(error: &ConnectorError) -> Self {
        match error {
            ConnectorError::PersonalizeTimeout { .. } => RecommendOutcome::Timeout,
            ConnectorError::PersonalizeThrottled { .. } => RecommendOutcome::Throttled,
            ConnectorError::PersonalizeNotFound { .. } => RecommendOutcome::NotFound,
            ConnectorError::PersonalizeInvalidInput { .. } => RecommendOutcome::InvalidInput,
            ConnectorError::PersonalizeBreakerOpen { .. } => RecommendOutcome::BreakerOpen,
            _ => RecommendOutcome::Error,
        }
    }
}

impl std::fmt::Display for RecommendOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The recommender's knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecommenderConfig {
    /// The budget of one call, from sending to the parsed answer (default 150 ms).
    pub timeout: Duration,
    /// When the breaker opens and for how long (default: 5 failures in a row, 10 s).
    pub breaker: BreakerConfig,
}

impl Default for RecommenderConfig {
    fn default() -> Self {
        RecommenderConfig {
            timeout: Duration::from_millis(150),
            breaker: BreakerConfig::default(),
        }
    }
}

/// Asks Personalize for recommendations within a budget, behind a circuit breaker. Share it (it is
/// `Sync`) between the serving layer's handlers.
#[derive(Debug)]
pub struct Recommender {
    client: Client,
    config: RecommenderConfig,
    breaker: Mutex<CircuitBreaker>,
}

impl Recommender {
    /// A recommender using `client`'s endpoint, region and credentials, with the SDK's retries
    /// switched off (whatever `client` was built with): one attempt must fit in the budget.
    pub fn new(client: &Client, config: RecommenderConfig) -> Self {
        let single_attempt = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        Recommender {
            client: Client::from_conf(single_attempt),
            config,
            breaker: Mutex::new(CircuitBreaker::new(config.breaker)),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> RecommenderConfig {
        self.config
    }

    /// What the breaker does with calls now.
    pub fn breaker_state(&self) -> BreakerState {
        self.lock_breaker().state(Instant::now())
    }

    /// Personalize's recommendations for `request`, or why there are none.
    ///
    /// Fails without calling Personalize when the request is invalid
    /// ([`ConnectorError::PersonalizeInvalidInput`]; this does not count against the breaker) or
    /// the breaker is open ([`ConnectorError::PersonalizeBreakerOpen`]). Otherwise the call's
    /// failure is one of [`ConnectorError::PersonalizeTimeout`],
    /// [`ConnectorError::PersonalizeThrottled`], [`ConnectorError::PersonalizeNotFound`],
    /// [`ConnectorError::PersonalizeInvalidInput`] or [`ConnectorError::PersonalizeService`], and
    /// counts against the breaker.
    pub async fn recommend(
        &self,
        request: &RecommendationRequest,
    ) -> Result<Recommendations, ConnectorError> {
        let problems = request.problems();
        if !problems.is_empty() {
            return Err(ConnectorError::PersonalizeInvalidInput {
                what: request.describe(),
                message: problems.join("; "),
            });
        }
        let admission = self.lock_breaker().admit(Instant::now());
        if let super::breaker::Admission::Rejected { retry_in } = admission {
            return Err(ConnectorError::PersonalizeBreakerOpen {
                what: request.describe(),
                retry_in,
            });
        }

        let call = self
            .client
            .get_recommendations()
            .set_campaign_arn(match &request.source {
                RecommendationSource::Campaign(arn) => Some(arn.clone()),
                RecommendationSource::Recommender(_) => None,
            })
            .set_recommender_arn(match &request.source {
                RecommendationSource::Recommender(arn) => Some(arn.clone()),
                RecommendationSource::Campaign(_) => None,
            })
            .user_id(&request.user_id)
            .num_results(i32::try_from(request.num_results).unwrap_or(i32::MAX))
            .set_filter_arn(request.filter_arn.clone())
            .set_filter_values((!request.filter_values.is_empty()).then(|| {
                request
                    .filter_values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }))
            .send();
        let result = match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(output)) => Ok(Recommendations::from(output)),
            Ok(Err(error)) => Err(classify_recommend_error(request.describe(), &error)),
            Err(_elapsed) => Err(ConnectorError::PersonalizeTimeout {
                what: request.describe(),
                budget: self.config.timeout,
            }),
        };

        let mut breaker = self.lock_breaker();
        match &result {
            Ok(_) => breaker.record_success(Instant::now()),
            Err(_) => breaker.record_failure(Instant::now()),
        }
        result
    }

    fn lock_breaker(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        // The breaker's state stays consistent whatever panicked while holding the lock.
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Error codes Personalize (or the AWS front door) uses for "too many requests".
fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "LimitExceededException"
            | "RequestLimitExceeded"
    )
}

/// The [`ConnectorError`] for a failed `GetRecommendations` call about `what`.
fn classify_recommend_error(
    what: String,
    error: &SdkError<GetRecommendationsError>,
) -> ConnectorError {
    match error {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = format!("{code}: {}", err.message().unwrap_or_default());
            match err {
                GetRecommendationsError::ResourceNotFoundException(_) => {
                    ConnectorError::PersonalizeNotFound { what, message }
                }
                GetRecommendationsError::InvalidInputException(_) => {
                    ConnectorError::PersonalizeInvalidInput { what, message }
                }
                _ if is_throttling_code(&code) => {
                    ConnectorError::PersonalizeThrottled { what, message }
                }
                _ => ConnectorError::PersonalizeService {
                    what,
                    retryable: retryable_service_code(&code)
                        || service.raw().status().is_server_error(),
                    message,
                },
            }
        }
        SdkError::TimeoutError(_) => ConnectorError::PersonalizeService {
            what,
            message: "the SDK's own timeout expired".to_string(),
            retryable: true,
        },
        SdkError::DispatchFailure(failure) => ConnectorError::PersonalizeService {
            what,
            message: format!("the request could not be sent: {failure:?}"),
            retryable: true,
        },
        SdkError::ResponseError(failure) => ConnectorError::PersonalizeService {
            what,
            message: format!("the response could not be read: {failure:?}"),
            retryable: true,
        },
        other => ConnectorError::PersonalizeService {
            what,
            message: other.to_string(),
            retryable: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RecommendationRequest {
        RecommendationRequest::new(
            RecommendationSource::Campaign("arn:aws:personalize:us-east-1:1:campaign/c".into()),
            "u1",
            10,
        )
    }

    #[test]
    fn a_valid_request_has_no_problems() {
        assert!(request().problems().is_empty());
        let filtered = request().with_filter(
            "arn:aws:personalize:us-east-1:1:filter/f",
            [("PORTAL".to_string(), "\"g1\"".to_string())],
        );
        assert!(filtered.problems().is_empty());
    }

    #[test]
    fn invalid_requests_name_every_problem() {
        let mut bad = request();
        bad.user_id.clear();
        bad.num_results = MAX_NUM_RESULTS + 1;
        bad.filter_values
            .insert("PORTAL".to_string(), "\"g1\"".to_string());
        let problems = bad.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("user id")));
        assert!(problems.iter().any(|p| p.contains("1 to 500")));
        assert!(problems.iter().any(|p| p.contains("filter ARN")));
        bad.num_results = 0;
        assert!(
            bad.problems()
                .iter()
                .any(|p| p.contains("num_results is 0"))
        );
    }

    #[test]
    fn outcome_labels_follow_the_error_kind() {
        let what = || "x".to_string();
        let cases = [
            (
                ConnectorError::PersonalizeTimeout {
                    what: what(),
                    budget: Duration::from_millis(150),
                },
                "timeout",
            ),
            (
                ConnectorError::PersonalizeThrottled {
                    what: what(),
                    message: String::new(),
                },
                "throttled",
            ),
            (
                ConnectorError::PersonalizeNotFound {
                    what: what(),
                    message: String::new(),
                },
                "not_found",
            ),
            (
                ConnectorError::PersonalizeInvalidInput {
                    what: what(),
                    message: String::new(),
                },
                "invalid_input",
            ),
            (
                ConnectorError::PersonalizeService {
                    what: what(),
                    message: String::new(),
                    retryable: true,
                },
                "error",
            ),
            (
                ConnectorError::PersonalizeBreakerOpen {
                    what: what(),
                    retry_in: Duration::from_secs(1),
                },
                "breaker_open",
            ),
            (ConnectorError::Closed { sink: what() }, "error"),
        ];
        for (error, label) in cases {
            assert_eq!(RecommendOutcome::of_error(&error).as_str(), label);
        }
        assert_eq!(
            RecommendOutcome::of(&Ok::<(), ConnectorError>(())).as_str(),
            "ok"
        );
    }

    #[test]
    fn throttling_codes_are_recognised() {
        assert!(is_throttling_code("ThrottlingException"));
        assert!(is_throttling_code("TooManyRequestsException"));
        assert!(!is_throttling_code("InternalFailure"));
    }
}
