//! A fake Amazon Personalize for tests: `GetRecommendations` and `PutEvents` on loopback.
//!
//! It is a fake, not an emulator, because no local server for Personalize exists: moto answers
//! 404 for both `personalize-runtime` and `personalize-events` (see `../shared/LOCAL-AWS.md`,
//! "Amazon Personalize"). It speaks the wire protocol the real AWS SDK clients send and parse
//! (REST-JSON; checked against the SDK's serializers and deserializers in
//! `aws-sdk-personalizeruntime`'s and `aws-sdk-personalizeevents`' `protocol_serde`), following the
//! AWS API reference pages:
//!
//! - `GetRecommendations` (<https://docs.aws.amazon.com/personalize/latest/dg/API_RS_GetRecommendations.html>):
//!   `POST /recommendations` with `campaignArn` or `recommenderArn`, `userId`, `itemId`,
//!   `numResults` (0 to 500, 25 when absent), `filterArn`, `filterValues`; answers
//!   `{"itemList":[{"itemId","score"}],"recommendationId"}`.
//! - `PutEvents` (<https://docs.aws.amazon.com/personalize/latest/dg/API_UBS_PutEvents.html>):
//!   `POST /events` with `trackingId`, `userId`, `sessionId` and an `eventList` of 1 to 10 events
//!   (`eventId`, `eventType`, `itemId`, `sentAt` in epoch seconds, `properties`); answers 200 with
//!   an empty body.
//! - Errors (<https://docs.aws.amazon.com/personalize/latest/dg/CommonErrors.html>): the error
//!   code in the `x-amzn-ErrorType` header and as `__type` in a JSON body with a `message`, which
//!   is what the SDK parses: `ThrottlingException` 400 (the common-errors page's status for it),
//!   `ResourceNotFoundException` 404, `InvalidInputException` 400, `InternalFailure` 500,
//!   `ServiceUnavailable` 503, and a body that is not JSON gets `SerializationException` 400.
//!
//! It validates what the API reference says Personalize validates and answers
//! `InvalidInputException` otherwise: exactly one of `campaignArn`/`recommenderArn`, a `userId` or
//! `itemId`, `numResults` at most 500; `trackingId` and `sessionId` present, 1 to 10 events, each
//! with an `eventType` and a numeric `sentAt`, ids of at most 256 characters, `properties` a JSON
//! object of at most 1024 characters. (`userId` is optional in `PutEvents`, as in the reference.)
//! Signatures and credentials are not checked.
//!
//! Tests script it: a default [`FakeMode`] plus a queue of per-request modes
//! ([`FakePersonalize::push_modes`], shared by both APIs, consumed in arrival order), canned
//! recommendations per user, and a record of every request received, decoded, with the status it
//! was answered with. Requests are recorded when they arrive, before any [`FakeMode::Slow`] delay.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_config::BehaviorVersion;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
/// `numResults` when a `GetRecommendations` request has none.
const DEFAULT_NUM_RESULTS: usize = 25;

/// How the fake answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeMode {
    /// Answer normally (validating the request).
    Ok,
    /// Answer normally after this delay.
    Slow(Duration),
    /// `ThrottlingException`, HTTP 400.
    Throttle,
    /// `ResourceNotFoundException`, HTTP 404.
    NotFound,
    /// `InvalidInputException`, HTTP 400, whatever the request.
    InvalidInput,
    /// `InternalFailure`, HTTP 500.
    InternalFailure,
    /// `ServiceUnavailable`, HTTP 503.
    ServiceUnavailable,
}

/// A `GetRecommendations` request as received.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedRecommendationRequest {
    /// `campaignArn`.
    pub campaign_arn: Option<String>,
    /// `recommenderArn`.
    pub recommender_arn: Option<String>,
    /// `userId`.
    pub user_id: Option<String>,
    /// `itemId`.
    pub item_id: Option<String>,
    /// `numResults`.
    pub num_results: Option<i64>,
    /// `filterArn`.
    pub filter_arn: Option<String>,
    /// `filterValues`.
    pub filter_values: BTreeMap<String, String>,
    /// The HTTP status it was answered with.
    pub status: u16,
}

/// One event of a `PutEvents` request as received.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedEvent {
    /// `eventId`.
    pub event_id: Option<String>,
    /// `eventType`.
    pub event_type: Option<String>,
    /// `itemId`.
    pub item_id: Option<String>,
    /// `sentAt` (epoch seconds on the wire) in milliseconds.
    pub sent_at_ms: Option<i64>,
    /// `properties`.
    pub properties: Option<String>,
}

/// A `PutEvents` request as received.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedPutEvents {
    /// `trackingId`.
    pub tracking_id: Option<String>,
    /// `userId`.
    pub user_id: Option<String>,
    /// `sessionId`.
    pub session_id: Option<String>,
    /// `eventList`.
    pub events: Vec<RecordedEvent>,
    /// The HTTP status it was answered with.
    pub status: u16,
}

impl RecordedPutEvents {
    /// Whether the fake accepted it (HTTP 200).
    pub fn accepted(&self) -> bool {
        self.status == 200
    }
}

#[derive(Debug)]
struct Script {
    default_mode: FakeMode,
    queued_modes: VecDeque<FakeMode>,
    recommendations: BTreeMap<String, Vec<(String, Option<f64>)>>,
    recommendation_requests: Vec<RecordedRecommendationRequest>,
    put_events_requests: Vec<RecordedPutEvents>,
    answered: u64,
}

type Shared = Arc<Mutex<Script>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Script> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fake Personalize serving both APIs on `127.0.0.1`, until dropped.
#[derive(Debug)]
pub struct FakePersonalize {
    endpoint: String,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakePersonalize {
    /// Starts it on a free loopback port, on the current tokio runtime, answering [`FakeMode::Ok`].
    pub async fn start() -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind a loopback port for the fake Personalize: {e}"))?;
        let address = listener
            .local_addr()
            .map_err(|e| format!("cannot read the fake Personalize's address: {e}"))?;
        let shared: Shared = Arc::new(Mutex::new(Script {
            default_mode: FakeMode::Ok,
            queued_modes: VecDeque::new(),
            recommendations: BTreeMap::new(),
            recommendation_requests: Vec::new(),
            put_events_requests: Vec::new(),
            answered: 0,
        }));
        let router = Router::new()
            .route("/recommendations", post(get_recommendations))
            .route("/events", post(put_events))
            .fallback(unknown_operation)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let server = axum::serve(listener, router).with_graceful_shutdown(async move {
                // Dropping the sender stops the server as well as sending on it.
                let _ = stopped.await;
            });
            if let Err(error) = server.await {
                eprintln!("the fake Personalize stopped: {error}");
            }
        });
        Ok(FakePersonalize {
            endpoint: format!("http://{address}"),
            shared,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:<port>`, the endpoint URL for SDK clients.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How requests are answered when no queued mode is left.
    pub fn set_default_mode(&self, mode: FakeMode) {
        lock(&self.shared).default_mode = mode;
    }

    /// Modes for the next requests (of either API), one each, in arrival order.
    pub fn push_modes(&self, modes: impl IntoIterator<Item = FakeMode>) {
        lock(&self.shared).queued_modes.extend(modes);
    }

    /// The items `GetRecommendations` returns for `user_id`, best first (cut to `numResults`).
    /// Users without canned items get an empty list.
    pub fn set_recommendations(&self, user_id: &str, items: &[(&str, Option<f64>)]) {
        lock(&self.shared).recommendations.insert(
            user_id.to_string(),
            items
                .iter()
                .map(|(item, score)| (item.to_string(), *score))
                .collect(),
        );
    }

    /// Every `GetRecommendations` request received so far.
    pub fn recommendation_requests(&self) -> Vec<RecordedRecommendationRequest> {
        lock(&self.shared).recommendation_requests.clone()
    }

    /// Every `PutEvents` request received so far.
    pub fn put_events_requests(&self) -> Vec<RecordedPutEvents> {
        lock(&self.shared).put_events_requests.clone()
    }

    /// The `PutEvents` requests answered 200.
    pub fn accepted_put_events(&self) -> Vec<RecordedPutEvents> {
        self.put_events_requests()
            .into_iter()
            .filter(RecordedPutEvents::accepted)
            .collect()
    }

    /// Requests received so far, of both APIs.
    pub fn request_count(&self) -> usize {
        let script = lock(&self.shared);
        script.recommendation_requests.len() + script.put_events_requests.len()
    }

    /// A Personalize runtime client for this fake, with dummy credentials and the SDK's standard
    /// retries (3 attempts), as a client built from the default configuration has.
    pub fn runtime_client(&self) -> aws_sdk_personalizeruntime::Client {
        use aws_sdk_personalizeruntime::config::{Credentials, Region, retry::RetryConfig};
        let config = aws_sdk_personalizeruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "pageflow-tests",
            ))
            .retry_config(RetryConfig::standard())
            .build();
        aws_sdk_personalizeruntime::Client::from_conf(config)
    }

    /// A Personalize events client for this fake, with dummy credentials and the SDK's standard
    /// retries (3 attempts).
    pub fn events_client(&self) -> aws_sdk_personalizeevents::Client {
        use aws_sdk_personalizeevents::config::{Credentials, Region, retry::RetryConfig};
        let config = aws_sdk_personalizeevents::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "pageflow-tests",
            ))
            .retry_config(RetryConfig::standard())
            .build();
        aws_sdk_personalizeevents::Client::from_conf(config)
    }
}

impl Drop for FakePersonalize {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The answer the fake decided on, before any delay.
struct Answer {
    status: StatusCode,
    body: Option<Value>,
    error_code: Option<&'static str>,
    delay: Option<Duration>,
}

impl Answer {
    fn ok(body: Option<Value>, delay: Option<Duration>) -> Self {
        Answer {
            status: StatusCode::OK,
            body,
            error_code: None,
            delay,
        }
    }

    fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Answer {
            status,
            body: Some(json!({ "__type": code, "message": message.into() })),
            error_code: Some(code),
            delay: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Answer::error(StatusCode::BAD_REQUEST, "InvalidInputException", message)
    }

    /// The answer a scripted error mode forces, if it forces one.
    fn forced_by(mode: FakeMode) -> Option<Self> {
        Some(match mode {
            FakeMode::Ok | FakeMode::Slow(_) => return None,
            FakeMode::Throttle => Answer::error(
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                "Rate exceeded",
            ),
            FakeMode::NotFound => Answer::error(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                "The requested resource does not exist",
            ),
            FakeMode::InvalidInput => Answer::invalid("the fake was told to refuse this request"),
            FakeMode::InternalFailure => Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                "The request processing has failed because of an unknown error",
            ),
            FakeMode::ServiceUnavailable => Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server",
            ),
        })
    }

    async fn send(self, request_number: u64) -> Response {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let mut response = match self.body {
            Some(ref body) => (self.status, body.to_string()).into_response(),
            None => self.status.into_response(),
        };
        let headers = response.headers_mut();
        if self.body.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Ok(id) = HeaderValue::from_str(&format!("fake-{request_number:08}")) {
            headers.insert("x-amzn-RequestId", id);
        }
        if let Some(code) = self.error_code {
            headers.insert("x-amzn-ErrorType", HeaderValue::from_static(code));
        }
        response
    }
}

/// The next mode: the first queued one, else the default.
fn next_mode(script: &mut Script) -> FakeMode {
    script
        .queued_modes
        .pop_front()
        .unwrap_or(script.default_mode)
}

fn string_field(body: &Value, name: &str) -> Option<String> {
    body.get(name).and_then(Value::as_str).map(str::to_string)
}

/// Problems of an id field: present and 1 to 256 characters.
fn id_problem(name: &str, value: Option<&String>, required: bool) -> Option<String> {
    match value {
        None if required => Some(format!("{name} is required")),
        None => None,
        Some(v) if v.is_empty() || v.chars().count() > 256 => {
            Some(format!("{name} must be 1 to 256 characters"))
        }
        Some(_) => None,
    }
}

async fn get_recommendations(State(shared): State<Shared>, body: Bytes) -> Response {
    let (answer, number) = decide_recommendations(&shared, &body);
    answer.send(number).await
}

/// Records a `GetRecommendations` request and decides its answer.
fn decide_recommendations(shared: &Shared, body: &[u8]) -> (Answer, u64) {
    let decoded: Result<Value, _> = serde_json::from_slice(body);
    {
        let mut script = lock(shared);
        script.answered += 1;
        let number = script.answered;
        let mode = next_mode(&mut script);
        let Ok(body) = decoded else {
            script
                .recommendation_requests
                .push(RecordedRecommendationRequest {
                    status: 400,
                    ..RecordedRecommendationRequest::default()
                });
            let answer = Answer::error(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                "the request body is not JSON",
            );
            return (answer, number);
        };
        let mut request = RecordedRecommendationRequest {
            campaign_arn: string_field(&body, "campaignArn"),
            recommender_arn: string_field(&body, "recommenderArn"),
            user_id: string_field(&body, "userId"),
            item_id: string_field(&body, "itemId"),
            num_results: body.get("numResults").and_then(Value::as_i64),
            filter_arn: string_field(&body, "filterArn"),
            filter_values: body
                .get("filterValues")
                .and_then(Value::as_object)
                .map(|values| {
                    values
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            status: 0,
        };
        let answer =
            Answer::forced_by(mode).unwrap_or_else(|| match recommendation_problem(&request) {
                Some(problem) => Answer::invalid(problem),
                None => {
                    let wanted = request
                        .num_results
                        .map_or(DEFAULT_NUM_RESULTS, |n| usize::try_from(n).unwrap_or(0));
                    let items: Vec<Value> = request
                        .user_id
                        .as_ref()
                        .and_then(|user| script.recommendations.get(user))
                        .map(|items| {
                            items
                                .iter()
                                .take(wanted)
                                .map(|(item, score)| match score {
                                    Some(score) => json!({ "itemId": item, "score": score }),
                                    None => json!({ "itemId": item }),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let delay = match mode {
                        FakeMode::Slow(delay) => Some(delay),
                        _ => None,
                    };
                    Answer::ok(
                        Some(json!({
                            "itemList": items,
                            "recommendationId": format!("RID-fake-{number}"),
                        })),
                        delay,
                    )
                }
            });
        request.status = answer.status.as_u16();
        script.recommendation_requests.push(request);
        (answer, number)
    }
}

/// What Personalize would refuse in a `GetRecommendations` request.
fn recommendation_problem(request: &RecordedRecommendationRequest) -> Option<String> {
    let arns = [&request.campaign_arn, &request.recommender_arn];
    match arns.iter().filter(|arn| arn.is_some()).count() {
        0 => return Some("either campaignArn or recommenderArn is required".to_string()),
        2 => return Some("give campaignArn or recommenderArn, not both".to_string()),
        _ => {}
    }
    for arn in arns.into_iter().flatten().chain(&request.filter_arn) {
        if !arn.starts_with("arn:") || !arn.contains(":personalize:") || arn.len() > 256 {
            return Some(format!("{arn:?} is not a Personalize ARN"));
        }
    }
    if request.user_id.is_none() && request.item_id.is_none() {
        return Some("userId is required (itemId for related items)".to_string());
    }
    if let Some(problem) = id_problem("userId", request.user_id.as_ref(), false)
        .or_else(|| id_problem("itemId", request.item_id.as_ref(), false))
    {
        return Some(problem);
    }
    match request.num_results {
        Some(n) if !(0..=500).contains(&n) => Some(format!("numResults must be 0 to 500, got {n}")),
        _ => None,
    }
}

async fn put_events(State(shared): State<Shared>, body: Bytes) -> Response {
    let (answer, number) = decide_put_events(&shared, &body);
    answer.send(number).await
}

/// Records a `PutEvents` request and decides its answer.
fn decide_put_events(shared: &Shared, body: &[u8]) -> (Answer, u64) {
    let decoded: Result<Value, _> = serde_json::from_slice(body);
    {
        let mut script = lock(shared);
        script.answered += 1;
        let number = script.answered;
        let mode = next_mode(&mut script);
        let Ok(body) = decoded else {
            script.put_events_requests.push(RecordedPutEvents {
                status: 400,
                ..RecordedPutEvents::default()
            });
            let answer = Answer::error(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                "the request body is not JSON",
            );
            return (answer, number);
        };
        let event_list = body.get("eventList").and_then(Value::as_array);
        let mut request = RecordedPutEvents {
            tracking_id: string_field(&body, "trackingId"),
            user_id: string_field(&body, "userId"),
            session_id: string_field(&body, "sessionId"),
            events: event_list
                .map(|events| {
                    events
                        .iter()
                        .map(|event| RecordedEvent {
                            event_id: string_field(event, "eventId"),
                            event_type: string_field(event, "eventType"),
                            item_id: string_field(event, "itemId"),
                            sent_at_ms: event
                                .get("sentAt")
                                .and_then(Value::as_f64)
                                .map(|seconds| (seconds * 1000.0).round() as i64),
                            properties: string_field(event, "properties"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            status: 0,
        };
        let answer = Answer::forced_by(mode).unwrap_or_else(|| {
            match put_events_problem(&request, event_list.is_some()) {
                Some(problem) => Answer::invalid(problem),
                None => Answer::ok(
                    None,
                    match mode {
                        FakeMode::Slow(delay) => Some(delay),
                        _ => None,
                    },
                ),
            }
        });
        request.status = answer.status.as_u16();
        script.put_events_requests.push(request);
        (answer, number)
    }
}

/// Keys `properties` may not use (the API reference's list, case-insensitive).
const RESERVED_PROPERTY_KEYS: [&str; 6] = [
    "userid",
    "sessionid",
    "eventtype",
    "timestamp",
    "recommendationid",
    "impression",
];

/// What Personalize would refuse in a `PutEvents` request.
fn put_events_problem(request: &RecordedPutEvents, has_event_list: bool) -> Option<String> {
    if let Some(problem) = id_problem("trackingId", request.tracking_id.as_ref(), true)
        .or_else(|| id_problem("sessionId", request.session_id.as_ref(), true))
        .or_else(|| id_problem("userId", request.user_id.as_ref(), false))
    {
        return Some(problem);
    }
    if !has_event_list || request.events.is_empty() || request.events.len() > 10 {
        return Some(format!(
            "eventList must hold 1 to 10 events, got {}",
            request.events.len()
        ));
    }
    for (index, event) in request.events.iter().enumerate() {
        let problem = id_problem("eventType", event.event_type.as_ref(), true)
            .or_else(|| id_problem("eventId", event.event_id.as_ref(), false))
            .or_else(|| id_problem("itemId", event.item_id.as_ref(), false))
            .or_else(|| {
                event
                    .sent_at_ms
                    .is_none()
                    .then(|| "sentAt is required".to_string())
            })
            .or_else(|| {
                event
                    .properties
                    .as_ref()
                    .and_then(|p| properties_problem(p))
            });
        if let Some(problem) = problem {
            return Some(format!("eventList[{index}]: {problem}"));
        }
    }
    None
}

fn properties_problem(properties: &str) -> Option<String> {
    if properties.is_empty() || properties.chars().count() > 1024 {
        return Some("properties must be 1 to 1024 characters".to_string());
    }
    match serde_json::from_str::<Value>(properties) {
        Ok(Value::Object(map)) => map
            .keys()
            .find(|key| RESERVED_PROPERTY_KEYS.contains(&key.to_ascii_lowercase().as_str()))
            .map(|key| format!("properties may not use the reserved key {key:?}")),
        _ => Some("properties must be a JSON object".to_string()),
    }
}

async fn unknown_operation() -> Response {
    Answer::error(
        StatusCode::NOT_FOUND,
        "UnknownOperationException",
        "the fake Personalize serves only POST /recommendations and POST /events",
    )
    .send(0)
    .await
}
