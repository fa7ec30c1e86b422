//! Cross-origin requests from the portals' own web pages (CORS).
//!
//! A browser lets a page of `https://g1.globo.com` read an answer of pageflow only when the answer
//! says that origin may: `Access-Control-Allow-Origin: https://g1.globo.com`. Before a request
//! with an `x-api-key` or `authorization` header it first asks, with a *preflight*
//! (`OPTIONS` + `Origin` + `Access-Control-Request-Method`), which methods and headers are allowed.
//!
//! ```toml
//! [serve.cors]
//! allowed_origins = ["https://g1.globo.com", "https://ge.globo.com"]
//! max_age = "10m"      # how long a browser may reuse a preflight's answer
//! ```
//!
//! For an allowed origin: a preflight is answered 204 with `GET, HEAD, OPTIONS` and the request
//! headers `authorization`, `x-api-key` and `last-event-id` (the SSE streams' resume header);
//! every other answer (errors included: 401, 429…) gets `Access-Control-Allow-Origin` and exposes
//! `Retry-After` and `WWW-Authenticate` to the page's script. For any other origin no CORS header
//! is added at all (the browser then keeps the answer from the page), and its preflight is
//! answered 403 `forbidden`. Origins are compared exactly (scheme, host and port, case-insensitive);
//! there is no wildcard. No credentials mode: keys and tokens travel in headers, not cookies.
//! Every answer varies by `Origin` (`Vary: Origin`).
//!
//! With no `allowed_origins` (the default) the layer is not installed: same-origin pages (the live
//! page at `/`) need none of this.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pageflow_dataflow::config::Millis;
use serde::{Deserialize, Serialize};

use crate::api::ApiError;

/// The request headers a page may send.
pub const ALLOWED_HEADERS: &str = "authorization, x-api-key, last-event-id";
/// The methods a page may use.
pub const ALLOWED_METHODS: &str = "GET, HEAD, OPTIONS";
/// The answer headers a page's script may read besides the simple ones.
pub const EXPOSED_HEADERS: &str = "retry-after, www-authenticate";

/// The `[serve.cors]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// The origins (`scheme://host[:port]`) whose pages may call the API.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    pub max_age: Millis,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age: Millis::minutes(10),
        }
    }
}

impl CorsConfig {
    /// Checks the values, adding every problem to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        for origin in &self.allowed_origins {
            if let Err(problem) = check_origin(origin) {
                problems.push(format!(
                    "[serve.cors] `allowed_origins`: {origin:?} {problem}"
                ));
            }
        }
        if self.max_age.ms() > 24 * 3_600_000 {
            problems.push(format!(
                "[serve.cors] `max_age` = {} is more than browsers keep (at most `24h`; e.g. `10m`)",
                self.max_age
            ));
        }
    }
}

/// Whether `origin` is `http(s)://host[:port]` and nothing else; the problem otherwise.
fn check_origin(origin: &str) -> Result<(), String> {
    const FORM: &str = "write `https://host` or `https://host:port`, e.g. \"https://g1.globo.com\"";
    if origin == "*" || origin.contains('*') {
        return Err(format!(
            "is a wildcard: list each portal's origin instead; {FORM}"
        ));
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("has no scheme: {FORM}"));
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return Err(format!("is not an http or https origin: {FORM}"));
    }
    if rest.is_empty() {
        return Err(format!("has no host: {FORM}"));
    }
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "has a path: an origin is only scheme, host and port (no trailing `/`); {FORM}"
        ));
    }
    let host_chars = |c: char| c.is_ascii_alphanumeric() || "-.:[]".contains(c);
    if !rest.chars().all(host_chars) {
        return Err(format!("has characters a host cannot have: {FORM}"));
    }
    Ok(())
}

/// The CORS rules in force.
#[derive(Debug)]
pub struct Cors {
    origins: HashSet<String>,
    max_age: HeaderValue,
}

impl Cors {
    /// The rules of `config`, or `None` when no origin is allowed (then nothing is installed).
    pub fn new(config: &CorsConfig) -> Option<Self> {
        if config.allowed_origins.is_empty() {
            return None;
        }
        Some(Cors {
            origins: config
                .allowed_origins
                .iter()
                .map(|origin| origin.to_ascii_lowercase())
                .collect(),
            max_age: HeaderValue::from(config.max_age.ms() / 1000),
        })
    }

    /// The request's origin when it is an allowed one.
    fn allowed_origin(&self, request: &Request) -> Option<HeaderValue> {
        let origin = request.headers().get(header::ORIGIN)?;
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        self.origins.contains(&text).then(|| origin.clone())
    }
}

/// The middleware: answers preflights, and marks the answers to allowed origins.
pub(crate) async fn cors(State(cors): State<Arc<Cors>>, request: Request, next: Next) -> Response {
    let allowed = cors.allowed_origin(&request);
    let is_preflight = request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if is_preflight {
        preflight(&cors, allowed.is_some(), &request)
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if !is_preflight {
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED_HEADERS),
            );
        }
    }
    response
}

fn preflight(cors: &Cors, allowed: bool, request: &Request) -> Response {
    if !allowed {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .map(|origin| String::from_utf8_lossy(origin.as_bytes()).into_owned())
            .unwrap_or_default();
        return ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: format!(
                "pages of {origin:?} may not call this API from a browser: the operators can add the origin to [serve.cors] allowed_origins"
            ),
        }
        .into_response();
    }
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOWED_METHODS),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOWED_HEADERS),
            ),
            (header::ACCESS_CONTROL_MAX_AGE, cors.max_age.clone()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_be_scheme_host_and_port() {
        let config = CorsConfig {
            allowed_origins: [
                "https://g1.globo.com",
                "http://localhost:3000",
                "https://G1.globo.com",
                "*",
                "g1.globo.com",
                "https://g1.globo.com/",
                "ftp://files.globo.com",
                "https://",
                "https://bad host",
            ]
            .map(String::from)
            .to_vec(),
            max_age: Millis::hours(48),
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        let joined = problems.join("\n");
        assert_eq!(problems.len(), 7, "{joined}");
        for expected in [
            "\"*\" is a wildcard",
            "\"g1.globo.com\" has no scheme",
            "\"https://g1.globo.com/\" has a path",
            "\"ftp://files.globo.com\" is not an http or https origin",
            "\"https://\" has no host",
            "\"https://bad host\" has characters",
            "`max_age`",
        ] {
            assert!(joined.contains(expected), "{expected}: {joined}");
        }
        let mut problems = Vec::new();
        CorsConfig::default().validate(&mut problems);
        assert!(problems.is_empty());
        assert!(Cors::new(&CorsConfig::default()).is_none());
    }
}
