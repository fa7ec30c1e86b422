//! Who may call which endpoint: API keys, Amazon Cognito JWTs, and a policy per route group.
//!
//! # Route groups and policies
//!
//! Every route belongs to a group ([`ROUTES`] is the one list, also checked against the router
//! and the OpenAPI document): `rankings` (popular, trending, related, the portal list, the SSE
//! change streams and `/v1/status`), `recommendations`, `dashboard` (the live page at `/`) and
//! `metrics` (`/metrics`). Each group has a [`Policy`] in `[serve.auth]`:
//!
//! | policy | a request needs |
//! |---|---|
//! | `open` (default) | nothing; a key or token that is sent anyway is checked and must be valid |
//! | `api_key` | a valid API key in `x-api-key` |
//! | `jwt` | a valid Cognito token in `Authorization: Bearer <token>` |
//! | `api_key_or_jwt` | either |
//!
//! `/healthz`, `/readyz` and `/openapi.json` are always open and never rate limited (load
//! balancers and tools must reach them). The defaults keep `pageflow run` usable out of the box;
//! the configuration is refused when a policy needs keys or a user pool that is not configured.
//!
//! ```toml
//! [serve.auth]
//! rankings = "api_key_or_jwt"
//! recommendations = "jwt"
//! dashboard = "open"
//! metrics = "api_key"
//!
//! [[serve.auth.api_keys]]
//! name = "g1-frontend"       # the identity in logs and rate limits
//! sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//! per_second = 200.0         # optional: this key's own rate limit
//! burst = 400                # optional
//! groups = ["rankings"]      # optional: the groups this key may call (default: all)
//!
//! [serve.auth.jwt]           # an Amazon Cognito user pool
//! issuer = "https://cognito-idp.sa-east-1.amazonaws.com/sa-east-1_AbCdEf123"
//! token_use = "access"       # or "id"
//! client_ids = ["1example23456789"]
//! # jwks_url = "…"           # default: <issuer>/.well-known/jwks.json
//! # jwks_file = "jwks.json"  # offline: read the keys from a file instead
//! refresh_interval = "1h"
//! leeway = "30s"
//! ```
//!
//! Browsers: a page of another origin may send these headers once `[serve.cors]` allows it (see
//! [`super::cors`]), but the browser's `EventSource` cannot send headers at all: pages that follow
//! the SSE change streams of a guarded `rankings` group need a fetch-based SSE client.
//!
//! Errors use the API's error body: 401 `unauthorized` (no, unknown, malformed, expired or
//! otherwise invalid credentials; with `WWW-Authenticate` naming what the endpoint takes), 403
//! `forbidden` (a valid key that is not allowed for the group), 429 `rate_limited` (see
//! [`super::rate_limit`]).
//!
//! # API keys
//!
//! The configuration holds only the SHA-256 of each key, in hex, never the key itself. Make a key
//! and its hash with, e.g.:
//!
//! ```sh
//! KEY=$(openssl rand -hex 32)          # give this to the client
//! printf %s "$KEY" | sha256sum         # put this in `sha256`
//! ```
//!
//! (`printf %s`, not `echo`: a trailing newline would be hashed too.) Clients send the key as
//! `x-api-key: <key>`. The server hashes what it receives and compares it with every configured
//! hash in constant time. An `Authorization` header with another scheme than `Bearer` (e.g.
//! `ApiKey …`) is refused with a message pointing to `x-api-key`; sending both a key and a token
//! is refused too, as ambiguous.
//!
//! # Cognito JWTs
//!
//! Bearer tokens are verified as the Amazon Cognito developer guide says ("Verifying JSON web
//! tokens",
//! <https://docs.aws.amazon.com/cognito/latest/developerguide/amazon-cognito-user-pools-using-tokens-verifying-a-jwt.html>):
//!
//! 1. the token is three base64url parts; the header's `alg` must be `RS256` (anything else,
//!    `none` and `HS256` included, is refused before any key is looked at) and its `kid` must name
//!    a key of the user pool's JWKS;
//! 2. the RS256 signature must verify with that key;
//! 3. `iss` must equal the configured `issuer`, `https://cognito-idp.<region>.amazonaws.com/<pool id>`;
//! 4. `exp` must not have passed (`nbf`, if present, must have), give or take `leeway`;
//! 5. `token_use` must be the configured one, `access` or `id`;
//! 6. the app client must be one of `client_ids`: the `client_id` claim of access tokens, the
//!    `aud` claim of ID tokens.
//!
//! The JWKS is fetched from `jwks_url` (default `<issuer>/.well-known/jwks.json`) at start-up,
//! every `refresh_interval`, and when a token names a `kid` that is not known (a key rotation),
//! at most once per [`UNKNOWN_KID_REFRESH_COOLDOWN`] so that made-up `kid`s cannot make the job
//! hammer Cognito. A failed fetch keeps the last good keys and is logged; a failed start-up fetch
//! does not stop the job (tokens are refused until a fetch succeeds, retried every 30 s). With
//! `jwks_file` the keys are read from a file instead (offline use and tests): it must be readable
//! at start-up, and is read again on the same occasions.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pageflow_dataflow::config::Millis;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::cors::{Cors, CorsConfig};
use super::http::ApiError;
use super::rate_limit::{Clock, Decision, Quota, RateLimitConfig, RateLimiter, SystemClock};
use crate::config::ServeConfig;

/// The header API keys are sent in.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The least time between two JWKS fetches caused by tokens naming an unknown `kid`.
pub const UNKNOWN_KID_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);
/// After a failed fetch, the periodic refresh tries again this soon.
const FAILED_REFRESH_RETRY: Duration = Duration::from_secs(30);
/// A JWKS fetch must be answered within this time.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// The realm named in `WWW-Authenticate`.
const REALM: &str = "pageflow";

// ---------------------------------------------------------------------------------------------
// Routes, groups and policies
// ---------------------------------------------------------------------------------------------

/// A group of routes that share a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteGroup {
    /// Popular, trending, related, the portal list, the change streams, `/v1/status`.
    Rankings,
    /// `/v1/users/{user_id}/recommendations`.
    Recommendations,
    /// The live page at `/`.
    Dashboard,
    /// `/metrics`.
    Metrics,
}

impl RouteGroup {
    /// Every group.
    pub const ALL: [RouteGroup; 4] = [
        RouteGroup::Rankings,
        RouteGroup::Recommendations,
        RouteGroup::Dashboard,
        RouteGroup::Metrics,
    ];

    /// The group's key in `[serve.auth]`.
    pub fn key(self) -> &'static str {
        match self {
            RouteGroup::Rankings => "rankings",
            RouteGroup::Recommendations => "recommendations",
            RouteGroup::Dashboard => "dashboard",
            RouteGroup::Metrics => "metrics",
        }
    }
}

/// Who may reach a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteAccess {
    /// Everyone, never rate limited (probes and the API description).
    AlwaysOpen,
    /// As the group's policy says.
    Group(RouteGroup),
}

/// One route of the API: its path as written in the router, and who may reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The path template, e.g. `/v1/portals/{portal}/popular`.
    pub path: &'static str,
    /// Who may reach it.
    pub access: RouteAccess,
}

const fn open(path: &'static str) -> Route {
    Route {
        path,
        access: RouteAccess::AlwaysOpen,
    }
}

const fn grouped(path: &'static str, group: RouteGroup) -> Route {
    Route {
        path,
        access: RouteAccess::Group(group),
    }
}

/// Every route the API serves (all `GET`). The router, this list and the paths of the OpenAPI
/// document must agree (a test checks it): add a route here, and to `openapi.json`, when adding
/// it to the router.
pub const ROUTES: &[Route] = &[
    open("/healthz"),
    open("/readyz"),
    open("/openapi.json"),
    grouped("/", RouteGroup::Dashboard),
    grouped("/metrics", RouteGroup::Metrics),
    grouped("/v1/status", RouteGroup::Rankings),
    grouped("/v1/portals", RouteGroup::Rankings),
    grouped("/v1/portals/{portal}/popular", RouteGroup::Rankings),
    grouped("/v1/portals/{portal}/trending", RouteGroup::Rankings),
    grouped("/v1/portals/{portal}/popular/stream", RouteGroup::Rankings),
    grouped("/v1/portals/{portal}/trending/stream", RouteGroup::Rankings),
    grouped("/v1/articles/{article_id}/related", RouteGroup::Rankings),
    grouped(
        "/v1/users/{user_id}/recommendations",
        RouteGroup::Recommendations,
    ),
];

/// Who may reach the route `path` (a router path template). A route missing from [`ROUTES`] is
/// treated as a `rankings` route.
pub fn route_access(path: &str) -> RouteAccess {
    ROUTES
        .iter()
        .find(|route| route.path == path)
        .map_or(RouteAccess::Group(RouteGroup::Rankings), |route| {
            route.access
        })
}

/// What a route group asks of its callers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// No credentials needed (any sent must be valid).
    #[default]
    Open,
    /// A valid API key.
    ApiKey,
    /// A valid Cognito token.
    Jwt,
    /// A valid API key or a valid Cognito token.
    ApiKeyOrJwt,
}

impl Policy {
    /// The policy's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Open => "open",
            Policy::ApiKey => "api_key",
            Policy::Jwt => "jwt",
            Policy::ApiKeyOrJwt => "api_key_or_jwt",
        }
    }

    fn takes_api_keys(self) -> bool {
        matches!(self, Policy::Open | Policy::ApiKey | Policy::ApiKeyOrJwt)
    }

    fn takes_tokens(self) -> bool {
        matches!(self, Policy::Open | Policy::Jwt | Policy::ApiKeyOrJwt)
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The `[serve.auth]` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Popular, trending, related, portals, change streams, status.
    pub rankings: Policy,
    /// Recommendations.
    pub recommendations: Policy,
    /// The live page at `/`.
    pub dashboard: Policy,
    /// `/metrics`.
    pub metrics: Policy,
    /// The API keys: `[[serve.auth.api_keys]]` tables.
    pub api_keys: Vec<ApiKeyConfig>,
    /// The Cognito user pool whose tokens are accepted.
    pub jwt: Option<JwtConfig>,
}

/// One API key, by the SHA-256 of its value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds the key: the identity in logs and rate limits.
    pub name: String,
    /// The SHA-256 of the key, 64 hex digits (`printf %s KEY | sha256sum`).
    pub sha256: String,
    /// This key's rate (requests per second), instead of `[serve.rate_limit] per_second`.
    pub per_second: Option<f64>,
    /// This key's burst, instead of `[serve.rate_limit] burst`.
    pub burst: Option<u32>,
    /// The route groups this key may call; empty: all.
    pub groups: Vec<RouteGroup>,
}

/// Which Cognito token is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenUse {
    /// Access tokens (`token_use = "access"`, app client in `client_id`).
    #[default]
    Access,
    /// ID tokens (`token_use = "id"`, app client in `aud`).
    Id,
}

impl TokenUse {
    fn name(self) -> &'static str {
        match self {
            TokenUse::Access => "access",
            TokenUse::Id => "id",
        }
    }
}

/// The `[serve.auth.jwt]` section: an Amazon Cognito user pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `https://cognito-idp.<region>.amazonaws.com/<user pool id>`, exactly as in the tokens' `iss`.
    pub issuer: String,
    /// `access` or `id`.
    pub token_use: TokenUse,
    /// The app clients whose tokens are accepted.
    pub client_ids: Vec<String>,
    /// Where the signing keys are (default `<issuer>/.well-known/jwks.json`).
    pub jwks_url: Option<String>,
    /// Read the signing keys from this file instead of fetching them.
    pub jwks_file: Option<PathBuf>,
    /// How often the keys are fetched again.
    pub refresh_interval: Millis,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Millis,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: String::new(),
            token_use: TokenUse::Access,
            client_ids: Vec::new(),
            jwks_url: None,
            jwks_file: None,
            refresh_interval: Millis::hours(1),
            leeway: Millis::seconds(30),
        }
    }
}

impl JwtConfig {
    /// Where the JWKS is fetched from when no file is given.
    pub fn jwks_url(&self) -> String {
        self.jwks_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/jwks.json",
                self.issuer.trim_end_matches('/')
            )
        })
    }

    fn validate(&self, problems: &mut Vec<String>) {
        const AT: &str = "[serve.auth.jwt]";
        const ISSUER_FORM: &str = "write the user pool's issuer, `https://cognito-idp.<region>.amazonaws.com/<user pool id>`";
        if self.issuer.trim().is_empty() {
            problems.push(format!("{AT} `issuer` is empty: {ISSUER_FORM}"));
        } else if !self.issuer.starts_with("https://") {
            problems.push(format!(
                "{AT} `issuer` = {:?} is not an https URL: {ISSUER_FORM}",
                self.issuer
            ));
        } else if self.issuer.ends_with('/') {
            problems.push(format!(
                "{AT} `issuer` = {:?} ends with `/`, which tokens' `iss` never does: remove it",
                self.issuer
            ));
        }
        if self.client_ids.iter().all(|id| id.trim().is_empty()) {
            problems.push(format!(
                "{AT} `client_ids` is empty: list the user pool's app client ids whose tokens are accepted, e.g. [\"1example23456789\"]"
            ));
        }
        match (&self.jwks_url, &self.jwks_file) {
            (Some(_), Some(_)) => problems.push(format!(
                "{AT} sets both `jwks_url` and `jwks_file`: keep one (the file for offline use)"
            )),
            (Some(url), None) => {
                if let Err(problem) = check_jwks_url(url) {
                    problems.push(format!("{AT} `jwks_url` = {url:?} {problem}"));
                }
            }
            (None, Some(file)) if file.as_os_str().is_empty() => {
                problems.push(format!("{AT} `jwks_file` is empty: name the JWKS file"));
            }
            _ => {}
        }
        if self.refresh_interval.ms() < 60_000 {
            problems.push(format!(
                "{AT} `refresh_interval` = {} is below `1m`: the keys rotate rarely, e.g. `1h`",
                self.refresh_interval
            ));
        }
        if self.leeway.ms() > 300_000 {
            problems.push(format!(
                "{AT} `leeway` = {} is more than `5m`: it lets expired tokens in; e.g. `30s`",
                self.leeway
            ));
        }
    }
}

/// Whether `url` may serve signing keys: https, or http on the loopback interface only.
fn check_jwks_url(url: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("is not a URL ({e}): e.g. `https://…/.well-known/jwks.json`"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => Ok(()),
        (Some("http"), Some("127.0.0.1" | "localhost" | "[::1]")) => Ok(()),
        (Some("http"), Some(_)) => Err(
            "is plain http: signing keys fetched without TLS can be swapped in transit; use https (http only for 127.0.0.1 or localhost)"
                .to_string(),
        ),
        _ => Err("is not an http(s) URL with a host: e.g. `https://…/.well-known/jwks.json`".to_string()),
    }
}

impl ApiKeyConfig {
    fn validate(&self, index: usize, problems: &mut Vec<String>) {
        let at = format!("[[serve.auth.api_keys]] #{}", index + 1);
        if self.name.trim().is_empty() {
            problems.push(format!(
                "{at}: `name` is empty: name who holds the key, e.g. \"g1-frontend\""
            ));
        }
        if parse_sha256_hex(&self.sha256).is_none() {
            problems.push(format!(
                "{at} ({}): `sha256` must be the SHA-256 of the key as 64 hex digits, not the key itself: `printf %s KEY | sha256sum`",
                self.name
            ));
        }
        if self.per_second.is_some() || self.burst.is_some() {
            let defaults = RateLimitConfig::default();
            if let Err(problem) = super::rate_limit::check_quota(
                &at,
                self.per_second.unwrap_or(defaults.per_second),
                self.burst.unwrap_or(defaults.burst),
            ) {
                problems.push(problem);
            }
        }
    }
}

impl AuthConfig {
    /// The policy of `group`.
    pub fn policy(&self, group: RouteGroup) -> Policy {
        match group {
            RouteGroup::Rankings => self.rankings,
            RouteGroup::Recommendations => self.recommendations,
            RouteGroup::Dashboard => self.dashboard,
            RouteGroup::Metrics => self.metrics,
        }
    }

    /// Checks the values, adding every problem to `problems`, each saying what to do.
    pub fn validate(&self, problems: &mut Vec<String>) {
        for (index, key) in self.api_keys.iter().enumerate() {
            key.validate(index, problems);
        }
        let mut names = std::collections::BTreeSet::new();
        let mut hashes = std::collections::BTreeSet::new();
        for key in &self.api_keys {
            if !key.name.trim().is_empty() && !names.insert(key.name.as_str()) {
                problems.push(format!(
                    "[[serve.auth.api_keys]]: the name {:?} is used twice; give each key its own name",
                    key.name
                ));
            }
            if let Some(hash) = parse_sha256_hex(&key.sha256)
                && !hashes.insert(hash)
            {
                problems.push(format!(
                    "[[serve.auth.api_keys]] ({}): the same key hash is configured twice; make a new key for each holder",
                    key.name
                ));
            }
        }
        if let Some(jwt) = &self.jwt {
            jwt.validate(problems);
        }
        let has_keys = !self.api_keys.is_empty();
        let has_pool = self.jwt.is_some();
        const ADD_KEY: &str = "add a [[serve.auth.api_keys]] table with `name` and `sha256` (`printf %s KEY | sha256sum`)";
        const ADD_POOL: &str =
            "add [serve.auth.jwt] with the Cognito user pool's `issuer` and `client_ids`";
        for group in RouteGroup::ALL {
            let policy = self.policy(group);
            let missing = match policy {
                Policy::Open => None,
                Policy::ApiKey if !has_keys => {
                    Some(format!("needs API keys, and none is configured: {ADD_KEY}"))
                }
                Policy::Jwt if !has_pool => Some(format!(
                    "needs a Cognito user pool, and none is configured: {ADD_POOL}"
                )),
                Policy::ApiKeyOrJwt if !has_keys && !has_pool => Some(format!(
                    "needs API keys or a Cognito user pool, and neither is configured: {ADD_KEY}, or {ADD_POOL}"
                )),
                _ => None,
            };
            if let Some(missing) = missing {
                problems.push(format!(
                    "[serve.auth] `{}` = \"{}\" {missing}; or set `{}` = \"open\"",
                    group.key(),
                    policy.name(),
                    group.key()
                ));
            }
        }
    }
}

/// The 32 bytes of a 64-hex-digit SHA-256.
fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

// ---------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------

/// Who made a request, as established by the guard; handlers can read it from the request's
/// extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No credentials (an open route).
    Anonymous {
        /// The client's address, when known.
        ip: Option<IpAddr>,
    },
    /// A valid API key.
    ApiKey {
        /// The key's configured name.
        name: Arc<str>,
    },
    /// A valid Cognito token.
    Jwt {
        /// The `sub` claim: the user (or the app client, for client-credentials tokens).
        subject: String,
        /// The app client the token was issued to.
        client_id: String,
    },
}

impl Caller {
    /// The rate-limit identity.
    fn identity(&self) -> String {
        match self {
            Caller::Anonymous { ip } => anonymous_identity(*ip),
            Caller::ApiKey { name } => format!("key:{name}"),
            Caller::Jwt { subject, .. } => format!("jwt:{subject}"),
        }
    }

    /// How the caller is named in messages.
    fn describe(&self) -> String {
        match self {
            Caller::Anonymous { ip: Some(ip) } => format!("address {ip}"),
            Caller::Anonymous { ip: None } => "anonymous callers".to_string(),
            Caller::ApiKey { name } => format!("API key {name:?}"),
            Caller::Jwt { subject, .. } => format!("token subject {subject:?}"),
        }
    }
}

fn anonymous_identity(ip: Option<IpAddr>) -> String {
    match ip {
        Some(ip) => format!("ip:{ip}"),
        None => "ip:unknown".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct ApiKey {
    name: Arc<str>,
    hash: [u8; 32],
    quota: Option<Quota>,
    groups: Vec<RouteGroup>,
}

/// The configured keys.
#[derive(Debug, Default)]
struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    fn new(configs: &[ApiKeyConfig], default: Quota) -> Self {
        let keys = configs
            .iter()
            .filter_map(|config| {
                let hash = parse_sha256_hex(&config.sha256)?;
                let quota =
                    (config.per_second.is_some() || config.burst.is_some()).then(|| Quota {
                        per_second: config.per_second.unwrap_or(default.per_second),
                        burst: config.burst.unwrap_or(default.burst),
                    });
                Some(ApiKey {
                    name: config.name.as_str().into(),
                    hash,
                    quota,
                    groups: config.groups.clone(),
                })
            })
            .collect();
        ApiKeys { keys }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose hash is the hash of `presented`. Every configured hash is compared, in
    /// constant time, whatever matches.
    fn find(&self, presented: &str) -> Option<&ApiKey> {
        let digest = Sha256::digest(presented.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.as_slice().ct_eq(digest.as_slice())) {
                found = Some(key);
            }
        }
        found
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS and JWT verification
// ---------------------------------------------------------------------------------------------

type JwksHttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Body,
>;

/// Where the signing keys come from.
enum JwksSource {
    Url {
        url: Uri,
        client: Box<JwksHttpClient>,
    },
    File(PathBuf),
}

impl fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl JwksSource {
    fn url(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("the JWKS URL {url:?} is not a URL: {e}"))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| {
                format!(
                    "cannot load the system's root certificates to fetch {url}: {e}; install the CA certificates (Debian: ca-certificates) or use `jwks_file`"
                )
            })?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(JwksSource::Url {
            url: uri,
            client: Box::new(client),
        })
    }

    fn describe(&self) -> String {
        match self {
            JwksSource::Url { url, .. } => url.to_string(),
            JwksSource::File(path) => path.display().to_string(),
        }
    }

    async fn fetch(&self) -> Result<Bytes, String> {
        match self {
            JwksSource::File(path) => std::fs::read(path)
                .map(Bytes::from)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            JwksSource::Url { url, client } => {
                let request = axum::http::Request::get(url.clone())
                    .header(header::ACCEPT, "application/json")
                    .body(Body::empty())
                    .map_err(|e| format!("cannot build a request to {url}: {e}"))?;
                let response = tokio::time::timeout(JWKS_FETCH_TIMEOUT, client.request(request))
                    .await
                    .map_err(|_| format!("{url} did not answer within {JWKS_FETCH_TIMEOUT:?}"))?
                    .map_err(|e| format!("cannot reach {url}: {}", error_chain(&e)))?;
                let status = response.status();
                if status != StatusCode::OK {
                    return Err(format!("{url} answered {status}, not 200"));
                }
                let body = Body::new(response.into_body());
                tokio::time::timeout(
                    JWKS_FETCH_TIMEOUT,
                    axum::body::to_bytes(body, MAX_JWKS_BYTES),
                )
                .await
                .map_err(|_| {
                    format!("{url} did not send its answer within {JWKS_FETCH_TIMEOUT:?}")
                })?
                .map_err(|e| {
                    format!(
                        "cannot read the answer of {url} (at most {MAX_JWKS_BYTES} bytes): {}",
                        error_chain(&e)
                    )
                })
            }
        }
    }
}

/// An error and its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

type PublicKey = RsaPublicKeyComponents<Vec<u8>>;
type KeySet = HashMap<String, Arc<PublicKey>>;

/// The RS256 signing keys of a JWKS document, by `kid`. Keys of other types or algorithms are
/// skipped; a document without any usable key is an error.
fn parse_jwks(bytes: &[u8]) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct JwkSet {
        keys: Vec<Jwk>,
    }
    #[derive(Deserialize)]
    struct Jwk {
        kty: String,
        kid: Option<String>,
        alg: Option<String>,
        #[serde(rename = "use")]
        usage: Option<String>,
        n: Option<String>,
        e: Option<String>,
    }
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| format!("the JWKS is not a JSON object with `keys`: {e}"))?;
    let mut keys = KeySet::new();
    for jwk in set.keys {
        let usable = jwk.kty == "RSA"
            && jwk.alg.as_deref().is_none_or(|alg| alg == "RS256")
            && jwk.usage.as_deref().is_none_or(|usage| usage == "sig");
        let (true, Some(kid), Some(n), Some(e)) = (usable, jwk.kid, jwk.n, jwk.e) else {
            continue;
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|err| format!("key {kid:?} has an invalid `{what}` ({err})"))
        };
        let mut n = decode(&n, "n")?;
        let e = decode(&e, "e")?;
        // Leading zero bytes are not part of the modulus' big-endian form.
        let zeros = n.iter().take_while(|b| **b == 0).count();
        n.drain(..zeros);
        keys.insert(kid, Arc::new(RsaPublicKeyComponents { n, e }));
    }
    if keys.is_empty() {
        return Err("the JWKS has no RS256 signing key (kty RSA, with kid, n and e)".to_string());
    }
    Ok(keys)
}

/// The user pool's signing keys, fetched again when needed.
pub(crate) struct JwksCache {
    source: JwksSource,
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch was attempted (on the cache's clock); held while fetching, so that
    /// fetches never overlap.
    last_attempt: tokio::sync::Mutex<Option<Duration>>,
    clock: Arc<dyn Clock>,
    fetches: AtomicU64,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", &self.source)
            .field("keys", &self.current().len())
            .field("fetches", &self.fetch_count())
            .finish()
    }
}

impl JwksCache {
    fn new(source: JwksSource, clock: Arc<dyn Clock>) -> Self {
        JwksCache {
            source,
            keys: RwLock::new(Arc::new(KeySet::new())),
            last_attempt: tokio::sync::Mutex::new(None),
            clock,
            fetches: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Fetches attempted so far.
    pub(crate) fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Fetches the keys now; on failure keeps the old ones. Returns the number of keys fetched.
    async fn refresh(&self, reason: &str) -> Result<usize, String> {
        let mut last_attempt = self.last_attempt.lock().await;
        self.fetch_locked(&mut last_attempt, reason).await
    }

    async fn fetch_locked(
        &self,
        last_attempt: &mut Option<Duration>,
        reason: &str,
    ) -> Result<usize, String> {
        *last_attempt = Some(self.clock.now());
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let fetched = self
            .source
            .fetch()
            .await
            .and_then(|bytes| parse_jwks(&bytes));
        match fetched {
            Ok(keys) => {
                let count = keys.len();
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                tracing::info!(
                    source = %self.source.describe(),
                    keys = count,
                    "fetched the JWT signing keys ({reason})"
                );
                Ok(count)
            }
            Err(error) => {
                let kept = self.current().len();
                tracing::warn!(
                    source = %self.source.describe(),
                    "cannot refresh the JWT signing keys ({reason}): {error}; keeping the {kept} keys fetched before, so tokens signed with a newer key are refused until a fetch succeeds"
                );
                Err(error)
            }
        }
    }

    /// The key `kid`, fetching the keys again first when it is unknown and the last fetch was
    /// at least [`UNKNOWN_KID_REFRESH_COOLDOWN`] ago.
    async fn key(&self, kid: &str) -> Option<Arc<PublicKey>> {
        if let Some(key) = self.current().get(kid) {
            return Some(Arc::clone(key));
        }
        let mut last_attempt = self.last_attempt.lock().await;
        // Another request may have fetched the keys while this one waited for the lock.
        if let Some(key) = self.current().get(kid) {
            return Some(Arc::clone(key));
        }
        let now = self.clock.now();
        let cooled_down =
            last_attempt.is_none_or(|last| now >= last + UNKNOWN_KID_REFRESH_COOLDOWN);
        if cooled_down {
            let reason = format!("a token names the unknown key {kid:?}");
            // A failure is logged; the answer is the same: the key is unknown.
            let _ = self.fetch_locked(&mut last_attempt, &reason).await;
        }
        drop(last_attempt);
        self.current().get(kid).cloned()
    }

    /// Fetches the keys every `interval` (sooner after a failure) for as long as the cache lives.
    fn spawn_refresher(cache: &Arc<JwksCache>, interval: Duration, first_fetch_ok: bool) {
        let weak: Weak<JwksCache> = Arc::downgrade(cache);
        tokio::spawn(async move {
            let mut wait = if first_fetch_ok {
                interval
            } else {
                FAILED_REFRESH_RETRY
            };
            loop {
                tokio::time::sleep(wait).await;
                let Some(cache) = weak.upgrade() else {
                    return;
                };
                wait = match cache.refresh("periodic refresh").await {
                    Ok(_) => interval,
                    Err(_) => FAILED_REFRESH_RETRY.min(interval),
                };
            }
        });
    }
}

/// Why a bearer token was refused; the `Display` is the message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JwtError {
    Malformed(String),
    UnsupportedAlgorithm(String),
    UnknownKey(String),
    BadSignature,
    WrongIssuer {
        found: String,
        expected: String,
    },
    Expired {
        exp: i64,
    },
    NotYetValid {
        nbf: i64,
    },
    WrongTokenUse {
        found: String,
        expected: &'static str,
    },
    WrongClient {
        found: String,
        claim: &'static str,
    },
    MissingClaim(&'static str),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(what) => write!(
                f,
                "the bearer token is not a well-formed JWT ({what}): send the Cognito token as issued, three base64url parts separated by '.'"
            ),
            JwtError::UnsupportedAlgorithm(alg) => write!(
                f,
                "the bearer token is signed with {alg:?}; only RS256 tokens of the configured Cognito user pool are accepted"
            ),
            JwtError::UnknownKey(kid) => write!(
                f,
                "the bearer token names the signing key {kid:?}, which is not among the user pool's keys: use a token issued by the configured user pool"
            ),
            JwtError::BadSignature => f.write_str(
                "the bearer token's signature does not verify: it was altered or not issued by the configured user pool",
            ),
            JwtError::WrongIssuer { found, expected } => write!(
                f,
                "the bearer token was issued by {found:?}, not by the configured user pool {expected:?}: sign in to that pool"
            ),
            JwtError::Expired { exp } => write!(
                f,
                "the bearer token expired (exp {exp}, seconds since the epoch): refresh it and retry"
            ),
            JwtError::NotYetValid { nbf } => write!(
                f,
                "the bearer token is not valid before {nbf} (seconds since the epoch): check the clocks"
            ),
            JwtError::WrongTokenUse { found, expected } => write!(
                f,
                "the bearer token is a Cognito {found:?} token; this API takes {expected:?} tokens"
            ),
            JwtError::WrongClient { found, claim } => write!(
                f,
                "the bearer token was issued to the app client {found:?} ({claim}), which this API does not accept"
            ),
            JwtError::MissingClaim(claim) => write!(
                f,
                "the bearer token has no `{claim}` claim: send a Cognito user pool token"
            ),
        }
    }
}

/// A verified token's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VerifiedToken {
    pub(crate) subject: String,
    pub(crate) client_id: String,
}

/// Verifies Cognito tokens (see the module docs for the steps).
#[derive(Debug)]
pub(crate) struct JwtVerifier {
    issuer: String,
    token_use: TokenUse,
    client_ids: Vec<String>,
    leeway_secs: i64,
    keys: Arc<JwksCache>,
}

impl JwtVerifier {
    /// A verifier for `config` whose keys are fetched once before this returns. A key file that
    /// cannot be read or parsed is an error; a URL that cannot be fetched is logged (tokens are
    /// refused until a later fetch succeeds).
    pub(crate) async fn start(
        config: &JwtConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, String> {
        let source = match &config.jwks_file {
            Some(path) => JwksSource::File(path.clone()),
            None => JwksSource::url(&config.jwks_url())?,
        };
        let is_file = matches!(source, JwksSource::File(_));
        let cache = Arc::new(JwksCache::new(source, clock));
        let first = cache.refresh("start-up").await;
        if let (true, Err(error)) = (is_file, &first) {
            return Err(format!(
                "[serve.auth.jwt] `jwks_file`: {error}; point it at the user pool's JWKS (its /.well-known/jwks.json)"
            ));
        }
        JwksCache::spawn_refresher(&cache, config.refresh_interval.into(), first.is_ok());
        Ok(Arc::new(Self::with_cache(config, cache)))
    }

    fn with_cache(config: &JwtConfig, keys: Arc<JwksCache>) -> Self {
        JwtVerifier {
            issuer: config.issuer.clone(),
            token_use: config.token_use,
            client_ids: config.client_ids.clone(),
            leeway_secs: i64::try_from(config.leeway.ms() / 1000).unwrap_or(i64::MAX),
            keys,
        }
    }

    /// Verifies `token` now.
    pub(crate) async fn verify(&self, token: &str) -> Result<VerifiedToken, JwtError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.verify_at(token, i64::try_from(now).unwrap_or(i64::MAX))
            .await
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub(crate) async fn verify_at(&self, token: &str, now: i64) -> Result<VerifiedToken, JwtError> {
        #[derive(Deserialize)]
        struct JoseHeader {
            alg: String,
            kid: Option<String>,
            crit: Option<serde_json::Value>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Audience {
            One(String),
            Many(Vec<String>),
        }
        #[derive(Deserialize)]
        struct Claims {
            iss: Option<String>,
            sub: Option<String>,
            exp: Option<f64>,
            nbf: Option<f64>,
            token_use: Option<String>,
            client_id: Option<String>,
            aud: Option<Audience>,
        }

        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three parts".into()));
        };
        let header: JoseHeader = decode_part(header_b64, "header")?;
        if header.alg != "RS256" {
            return Err(JwtError::UnsupportedAlgorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(JwtError::Malformed(
                "the header has critical extensions (crit)".into(),
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| JwtError::Malformed("the header has no kid".into()))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| JwtError::Malformed("the signature is not base64url".into()))?;
        let key = self
            .keys
            .key(&kid)
            .await
            .ok_or_else(|| JwtError::UnknownKey(kid.clone()))?;
        let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
        key.verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature)
            .map_err(|_| JwtError::BadSignature)?;

        let claims: Claims = decode_part(claims_b64, "claims")?;
        let issuer = claims.iss.ok_or(JwtError::MissingClaim("iss"))?;
        if issuer != self.issuer {
            return Err(JwtError::WrongIssuer {
                found: issuer,
                expected: self.issuer.clone(),
            });
        }
        let exp = claims.exp.ok_or(JwtError::MissingClaim("exp"))? as i64;
        if now > exp.saturating_add(self.leeway_secs) {
            return Err(JwtError::Expired { exp });
        }
        if let Some(nbf) = claims.nbf.map(|nbf| nbf as i64)
            && now.saturating_add(self.leeway_secs) < nbf
        {
            return Err(JwtError::NotYetValid { nbf });
        }
        let token_use = claims
            .token_use
            .ok_or(JwtError::MissingClaim("token_use"))?;
        if token_use != self.token_use.name() {
            return Err(JwtError::WrongTokenUse {
                found: token_use,
                expected: self.token_use.name(),
            });
        }
        let (client_id, claim) = match self.token_use {
            TokenUse::Access => (
                claims
                    .client_id
                    .ok_or(JwtError::MissingClaim("client_id"))?,
                "client_id",
            ),
            TokenUse::Id => {
                let audiences = match claims.aud.ok_or(JwtError::MissingClaim("aud"))? {
                    Audience::One(aud) => vec![aud],
                    Audience::Many(auds) => auds,
                };
                let accepted = audiences
                    .iter()
                    .find(|aud| self.client_ids.contains(aud))
                    .cloned();
                match accepted {
                    Some(aud) => (aud, "aud"),
                    None => (audiences.join(","), "aud"),
                }
            }
        };
        if !self.client_ids.contains(&client_id) {
            return Err(JwtError::WrongClient {
                found: client_id,
                claim,
            });
        }
        let subject = claims.sub.unwrap_or_else(|| client_id.clone());
        Ok(VerifiedToken { subject, client_id })
    }
}

/// A base64url JSON part of a token.
fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(format!("the {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| JwtError::Malformed(format!("the {what} is not the expected JSON: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The guard
// ---------------------------------------------------------------------------------------------

/// The rate limits in force.
#[derive(Debug)]
struct Limits {
    limiter: RateLimiter,
    default: Quota,
    trust_x_forwarded_for: bool,
}

/// Everything the serving layer needs to decide who may call what: the policies, keys, token
/// verifier, rate limits and CORS rules, and the OpenAPI document describing them.
#[derive(Debug)]
pub struct ServeSecurity {
    auth: AuthConfig,
    api_keys: ApiKeys,
    jwt: Option<Arc<JwtVerifier>>,
    limits: Option<Limits>,
    pub(crate) cors: Option<Arc<Cors>>,
    pub(crate) openapi: Bytes,
}

impl Default for ServeSecurity {
    fn default() -> Self {
        ServeSecurity::open()
    }
}

impl ServeSecurity {
    /// Every route open, no rate limit, no CORS: what [`super::App::new`] starts with.
    pub fn open() -> Self {
        Self::assemble(
            AuthConfig::default(),
            None,
            &RateLimitConfig {
                enabled: false,
                ..RateLimitConfig::default()
            },
            &CorsConfig::default(),
            Arc::new(SystemClock::new()),
        )
    }

    /// The security of `serve` (`[serve.auth]`, `[serve.rate_limit]`, `[serve.cors]`); the JWKS,
    /// when a user pool is configured, is fetched before this returns, and then kept fresh by a
    /// task on the current tokio runtime.
    pub async fn start(serve: &ServeConfig) -> Result<Self, String> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let jwt = match &serve.auth.jwt {
            Some(config) => Some(JwtVerifier::start(config, Arc::clone(&clock)).await?),
            None => None,
        };
        Ok(Self::assemble(
            serve.auth.clone(),
            jwt,
            &serve.rate_limit,
            &serve.cors,
            clock,
        ))
    }

    fn assemble(
        auth: AuthConfig,
        jwt: Option<Arc<JwtVerifier>>,
        rate_limit: &RateLimitConfig,
        cors: &CorsConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let api_keys = ApiKeys::new(&auth.api_keys, rate_limit.quota());
        let limits = rate_limit.enabled.then(|| Limits {
            limiter: RateLimiter::new(rate_limit.max_identities, clock),
            default: rate_limit.quota(),
            trust_x_forwarded_for: rate_limit.trust_x_forwarded_for,
        });
        let openapi = super::openapi::document(&|group| auth.policy(group));
        ServeSecurity {
            auth,
            api_keys,
            jwt,
            limits,
            cors: Cors::new(cors).map(Arc::new),
            openapi,
        }
    }

    /// The policy of `group`.
    pub fn policy(&self, group: RouteGroup) -> Policy {
        self.auth.policy(group)
    }

    /// Who is calling, if the credentials suit `policy` and `group`.
    async fn authenticate(
        &self,
        policy: Policy,
        group: RouteGroup,
        headers: &HeaderMap,
        ip: Option<IpAddr>,
    ) -> Result<Caller, Rejection> {
        let presented = Presented::from_headers(headers)
            .map_err(|message| Rejection::unauthorized(policy, message, None))?;
        match presented {
            Presented::Nothing { other_scheme } => match (policy, other_scheme) {
                (Policy::Open, _) => Ok(Caller::Anonymous { ip }),
                (_, Some(scheme)) => Err(Rejection::unauthorized(
                    policy,
                    format!(
                        "the Authorization header uses the {scheme:?} scheme, which this API does not take: {}",
                        missing_message(policy)
                    ),
                    None,
                )),
                (_, None) => Err(Rejection::unauthorized(
                    policy,
                    missing_message(policy),
                    None,
                )),
            },
            Presented::ApiKey(key) => {
                if !policy.takes_api_keys() {
                    return Err(Rejection::unauthorized(
                        policy,
                        "this endpoint does not take API keys: send a Cognito token as `Authorization: Bearer <token>`".to_string(),
                        None,
                    ));
                }
                if policy == Policy::Open && self.api_keys.is_empty() {
                    // Nothing to check it against, and nothing needed: ignored.
                    return Ok(Caller::Anonymous { ip });
                }
                let Some(key) = self.api_keys.find(key) else {
                    return Err(Rejection::unauthorized(
                        policy,
                        format!(
                            "the API key in {API_KEY_HEADER} is not known: check it, or ask the operators for a key"
                        ),
                        Some(Scheme::ApiKey),
                    ));
                };
                if !key.groups.is_empty() && !key.groups.contains(&group) {
                    return Err(Rejection::Forbidden(format!(
                        "the API key {:?} may not call {} endpoints (it may call: {}); ask the operators to add the group to its `groups`",
                        key.name,
                        group.key(),
                        key.groups
                            .iter()
                            .map(|g| g.key())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                Ok(Caller::ApiKey {
                    name: Arc::clone(&key.name),
                })
            }
            Presented::Bearer(token) => {
                if !policy.takes_tokens() {
                    return Err(Rejection::unauthorized(
                        policy,
                        format!(
                            "this endpoint does not take bearer tokens: send an API key in the {API_KEY_HEADER} header"
                        ),
                        None,
                    ));
                }
                let Some(verifier) = &self.jwt else {
                    // Only an open route gets here (a policy taking tokens needs a user pool).
                    return Ok(Caller::Anonymous { ip });
                };
                match verifier.verify(token).await {
                    Ok(verified) => Ok(Caller::Jwt {
                        subject: verified.subject,
                        client_id: verified.client_id,
                    }),
                    Err(error) => Err(Rejection::unauthorized(
                        policy,
                        error.to_string(),
                        Some(Scheme::Bearer),
                    )),
                }
            }
        }
    }

    /// Takes a token for `caller`; the 429 answer when there is none.
    fn limit(&self, caller: &Caller) -> Option<Response> {
        let limits = self.limits.as_ref()?;
        let quota = match caller {
            Caller::ApiKey { name } => self
                .api_keys
                .keys
                .iter()
                .find(|key| key.name == *name)
                .and_then(|key| key.quota)
                .unwrap_or(limits.default),
            _ => limits.default,
        };
        match limits.limiter.check(&caller.identity(), quota) {
            Decision::Allowed => None,
            Decision::Limited { retry_after_secs } => {
                Some(rate_limited(caller, quota, retry_after_secs))
            }
        }
    }

    /// The caller's address: the connection's, or with `trust_x_forwarded_for` the right-most
    /// address of `X-Forwarded-For`.
    fn client_ip(&self, request: &Request) -> Option<IpAddr> {
        let trust_forwarded = self
            .limits
            .as_ref()
            .is_some_and(|limits| limits.trust_x_forwarded_for);
        if trust_forwarded
            && let Some(ip) = request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.rsplit(',').next())
                .and_then(|last| last.trim().parse().ok())
        {
            return Some(ip);
        }
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
    }
}

/// The credentials a request carries.
enum Presented<'a> {
    /// No credentials of ours; `other_scheme` is the scheme of an `Authorization` header that is
    /// not `Bearer` (e.g. `Basic` from a proxy in front of the job), ignored on open routes.
    Nothing {
        other_scheme: Option<&'a str>,
    },
    ApiKey(&'a str),
    Bearer(&'a str),
}

impl<'a> Presented<'a> {
    fn from_headers(headers: &'a HeaderMap) -> Result<Self, String> {
        let api_key = match headers.get(API_KEY_HEADER) {
            None => None,
            Some(value) => match value.to_str() {
                Ok(key) if !key.trim().is_empty() => Some(key.trim()),
                _ => {
                    return Err(format!(
                        "the {API_KEY_HEADER} header is empty or not printable ASCII: send the key exactly as issued"
                    ));
                }
            },
        };
        let mut other_scheme = None;
        let bearer = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let text = value.to_str().map_err(|_| {
                    "the Authorization header is not printable ASCII: send `Authorization: Bearer <token>`".to_string()
                })?;
                let text = text.trim();
                let (scheme, credentials) = text.split_once(' ').unwrap_or((text, ""));
                if scheme.eq_ignore_ascii_case("bearer") {
                    let token = credentials.trim();
                    if token.is_empty() {
                        return Err(
                            "the Authorization header has no token after `Bearer`".to_string()
                        );
                    }
                    Some(token)
                } else {
                    other_scheme = Some(scheme);
                    None
                }
            }
        };
        match (api_key, bearer) {
            (None, None) => Ok(Presented::Nothing { other_scheme }),
            (Some(key), None) => Ok(Presented::ApiKey(key)),
            (None, Some(token)) => Ok(Presented::Bearer(token)),
            (Some(_), Some(_)) => Err(format!(
                "the request has both an API key ({API_KEY_HEADER}) and a bearer token: send only one"
            )),
        }
    }
}

fn missing_message(policy: Policy) -> String {
    match policy {
        Policy::ApiKey => format!(
            "this endpoint needs an API key: send it in the {API_KEY_HEADER} header (the operators issue keys)"
        ),
        Policy::Jwt => {
            "this endpoint needs a Cognito token: send `Authorization: Bearer <token>`".to_string()
        }
        _ => format!(
            "this endpoint needs an API key in the {API_KEY_HEADER} header or a Cognito token as `Authorization: Bearer <token>`"
        ),
    }
}

/// An authentication scheme, for `WWW-Authenticate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    ApiKey,
    Bearer,
}

/// A refused request.
#[derive(Debug)]
enum Rejection {
    /// 401: credentials missing or invalid. `challenges` name what the endpoint takes;
    /// `invalid` is the scheme of invalid credentials that were sent.
    Unauthorized {
        message: String,
        challenges: Vec<Scheme>,
        invalid: Option<Scheme>,
    },
    /// 403: valid credentials that may not call this group.
    Forbidden(String),
}

impl Rejection {
    fn unauthorized(policy: Policy, message: String, invalid: Option<Scheme>) -> Self {
        let challenges = match policy {
            Policy::ApiKey => vec![Scheme::ApiKey],
            Policy::Jwt => vec![Scheme::Bearer],
            Policy::ApiKeyOrJwt => vec![Scheme::ApiKey, Scheme::Bearer],
            // Invalid credentials sent to an open route: name what was wrong, or both schemes.
            Policy::Open => match invalid {
                Some(scheme) => vec![scheme],
                None => vec![Scheme::ApiKey, Scheme::Bearer],
            },
        };
        Rejection::Unauthorized {
            message,
            challenges,
            invalid,
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Forbidden(message) => ApiError {
                status: StatusCode::FORBIDDEN,
                code: "forbidden",
                message,
            }
            .into_response(),
            Rejection::Unauthorized {
                message,
                challenges,
                invalid,
            } => {
                let mut response = ApiError {
                    status: StatusCode::UNAUTHORIZED,
                    code: "unauthorized",
                    message,
                }
                .into_response();
                for scheme in challenges {
                    let challenge = match (scheme, invalid == Some(scheme)) {
                        (Scheme::Bearer, true) => {
                            format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"")
                        }
                        (Scheme::Bearer, false) => format!("Bearer realm=\"{REALM}\""),
                        (Scheme::ApiKey, _) => {
                            format!("ApiKey realm=\"{REALM}\", header=\"{API_KEY_HEADER}\"")
                        }
                    };
                    if let Ok(value) = HeaderValue::from_str(&challenge) {
                        response
                            .headers_mut()
                            .append(header::WWW_AUTHENTICATE, value);
                    }
                }
                response
            }
        }
    }
}

fn rate_limited(caller: &Caller, quota: Quota, retry_after_secs: u64) -> Response {
    let mut response = ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "rate_limited",
        message: format!(
            "too many requests from {}: retry after {retry_after_secs} s (Retry-After) and stay under {} requests per second (bursts of {}); an API key can be given a higher limit",
            caller.describe(),
            quota.per_second,
            quota.burst
        ),
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// The middleware in front of every route: finds the route's group, checks the credentials
/// against its policy, takes a rate-limit token, and hands the [`Caller`] to the handler.
pub(crate) async fn guard(
    State(security): State<Arc<ServeSecurity>>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(RouteAccess::Group(RouteGroup::Rankings), |path| {
            route_access(path.as_str())
        });
    let RouteAccess::Group(group) = access else {
        return next.run(request).await;
    };
    let policy = security.policy(group);
    let ip = security.client_ip(&request);
    match security
        .authenticate(policy, group, request.headers(), ip)
        .await
    {
        Ok(caller) => {
            if let Some(limited) = security.limit(&caller) {
                return limited;
            }
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(rejection) => {
            // Refused requests count against the caller's address, so floods of invalid keys
            // or tokens are limited like any anonymous traffic.
            if let Some(limited) = security.limit(&Caller::Anonymous { ip }) {
                return limited;
            }
            rejection.into_response()
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use axum::Router;
    use axum::body::to_bytes;
    use ring::rand::SystemRandom;
    use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::metrics::Metrics;
    use crate::serve::rate_limit::ManualClock;
    use crate::serve::{App, ServingState, app_router};

    pub(crate) const ISSUER: &str = "https://cognito-idp.sa-east-1.amazonaws.com/sa-east-1_Test";
    pub(crate) const CLIENT: &str = "test-app-client";
    /// A key whose SHA-256 is configured in the tests.
    pub(crate) const KEY: &str = "k3y-for-tests-0123456789abcdef";
    /// Another key, limited to the rankings group.
    const RANKINGS_KEY: &str = "rankings-only-key";
    const NOW: i64 = 1_800_000_000;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt")
    }

    pub(crate) fn sha256_hex(text: &str) -> String {
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The test-only key pair of `tests/fixtures/jwt`.
    fn key_pair() -> RsaKeyPair {
        let pem = std::fs::read_to_string(fixtures().join("test-rsa-private.pem"))
            .unwrap_or_else(|e| panic!("{e}"));
        let base64: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .unwrap_or_else(|e| panic!("{e}"));
        RsaKeyPair::from_pkcs8(&der).unwrap_or_else(|e| panic!("{e}"))
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    /// A token with `header` and `claims`, signed RS256 with the test key.
    pub(crate) fn sign(header: &Value, claims: &Value) -> String {
        let signed = format!("{}.{}", b64(header), b64(claims));
        let pair = key_pair();
        let mut signature = vec![0; pair.public().modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn header(kid: &str) -> Value {
        json!({"alg": "RS256", "kid": kid, "typ": "JWT"})
    }

    fn access_claims(exp: i64) -> Value {
        json!({
            "sub": "user-1",
            "iss": ISSUER,
            "token_use": "access",
            "client_id": CLIENT,
            "scope": "aws.cognito.signin.user.admin",
            "exp": exp,
            "iat": exp - 3600,
        })
    }

    /// Now (real time), in seconds since the epoch: the router checks tokens against it.
    fn unix_now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    /// A token valid for an hour from now (real time), for the router tests.
    pub(crate) fn valid_token() -> String {
        sign(&header("test-key-1"), &access_claims(unix_now() + 3600))
    }

    /// A JWKS file in a fresh directory with the fixture's key under `kids`.
    fn jwks_file(dir: &Path, kids: &[&str]) -> PathBuf {
        let fixture: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("test-jwks.json"))
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let key = &fixture["keys"][0];
        let mut keys: Vec<Value> = kids
            .iter()
            .map(|kid| {
                let mut key = key.clone();
                key["kid"] = json!(kid);
                key
            })
            .collect();
        // Keys that are not RS256 signing keys are skipped.
        keys.push(json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"}));
        keys.push(json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}));
        let path = dir.join("jwks.json");
        std::fs::write(&path, json!({ "keys": keys }).to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    fn jwt_config(jwks: PathBuf, token_use: TokenUse) -> JwtConfig {
        JwtConfig {
            issuer: ISSUER.to_string(),
            token_use,
            client_ids: vec![CLIENT.to_string(), "other-allowed-client".to_string()],
            jwks_file: Some(jwks),
            ..JwtConfig::default()
        }
    }

    struct Verifier {
        verifier: Arc<JwtVerifier>,
        clock: Arc<ManualClock>,
        jwks: PathBuf,
        _dir: tempfile::TempDir,
    }

    async fn verifier(token_use: TokenUse) -> Verifier {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let jwks = jwks_file(dir.path(), &["test-key-1"]);
        let clock = Arc::new(ManualClock::default());
        let verifier = JwtVerifier::start(&jwt_config(jwks.clone(), token_use), clock.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Verifier {
            verifier,
            clock,
            jwks,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn a_good_access_token_is_accepted() {
        let v = verifier(TokenUse::Access).await;
        let token = sign(&header("test-key-1"), &access_claims(NOW + 600));
        assert_eq!(
            v.verifier.verify_at(&token, NOW).await,
            Ok(VerifiedToken {
                subject: "user-1".into(),
                client_id: CLIENT.into()
            })
        );
    }

    #[tokio::test]
    async fn expiry_allows_the_leeway_and_no_more() {
        let v = verifier(TokenUse::Access).await;
        let token = sign(&header("test-key-1"), &access_claims(NOW));
        assert!(v.verifier.verify_at(&token, NOW + 30).await.is_ok());
        assert_eq!(
            v.verifier.verify_at(&token, NOW + 31).await,
            Err(JwtError::Expired { exp: NOW })
        );
        let mut claims = access_claims(NOW + 600);
        claims["nbf"] = json!(NOW + 100);
        let early = sign(&header("test-key-1"), &claims);
        assert_eq!(
            v.verifier.verify_at(&early, NOW).await,
            Err(JwtError::NotYetValid { nbf: NOW + 100 })
        );
    }

    #[tokio::test]
    async fn claims_must_match_the_pool_the_use_and_the_client() {
        let v = verifier(TokenUse::Access).await;
        let with = |key: &str, value: Value| {
            let mut claims = access_claims(NOW + 600);
            claims[key] = value;
            sign(&header("test-key-1"), &claims)
        };
        let issuer = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Other";
        assert_eq!(
            v.verifier.verify_at(&with("iss", json!(issuer)), NOW).await,
            Err(JwtError::WrongIssuer {
                found: issuer.into(),
                expected: ISSUER.into()
            })
        );
        assert_eq!(
            v.verifier
                .verify_at(&with("token_use", json!("id")), NOW)
                .await,
            Err(JwtError::WrongTokenUse {
                found: "id".into(),
                expected: "access"
            })
        );
        assert_eq!(
            v.verifier
                .verify_at(&with("client_id", json!("someone-else")), NOW)
                .await,
            Err(JwtError::WrongClient {
                found: "someone-else".into(),
                claim: "client_id"
            })
        );
        let mut claims = access_claims(NOW + 600);
        claims.as_object_mut().map(|c| c.remove("exp"));
        assert_eq!(
            v.verifier
                .verify_at(&sign(&header("test-key-1"), &claims), NOW)
                .await,
            Err(JwtError::MissingClaim("exp"))
        );
    }

    #[tokio::test]
    async fn id_tokens_name_their_client_in_aud() {
        let v = verifier(TokenUse::Id).await;
        let claims = |aud: Value| json!({"sub": "user-2", "iss": ISSUER, "token_use": "id", "aud": aud, "exp": NOW + 600});
        let token = sign(&header("test-key-1"), &claims(json!(CLIENT)));
        assert_eq!(
            v.verifier.verify_at(&token, NOW).await,
            Ok(VerifiedToken {
                subject: "user-2".into(),
                client_id: CLIENT.into()
            })
        );
        let token = sign(&header("test-key-1"), &claims(json!("another-client")));
        assert!(matches!(
            v.verifier.verify_at(&token, NOW).await,
            Err(JwtError::WrongClient { claim: "aud", .. })
        ));
        // An access token is not an ID token.
        let token = sign(&header("test-key-1"), &access_claims(NOW + 600));
        assert!(matches!(
            v.verifier.verify_at(&token, NOW).await,
            Err(JwtError::WrongTokenUse { .. })
        ));
    }

    #[tokio::test]
    async fn only_rs256_with_a_valid_signature_is_accepted() {
        let v = verifier(TokenUse::Access).await;
        let claims = access_claims(NOW + 600);
        let good = sign(&header("test-key-1"), &claims);
        // alg none: an empty signature, refused for its algorithm before any key is used.
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": "test-key-1"})),
            b64(&claims)
        );
        assert_eq!(
            v.verifier.verify_at(&none, NOW).await,
            Err(JwtError::UnsupportedAlgorithm("none".into()))
        );
        // HS256 "signed" with the public key (the classic confusion attack).
        let hs256 = sign(&json!({"alg": "HS256", "kid": "test-key-1"}), &claims);
        assert_eq!(
            v.verifier.verify_at(&hs256, NOW).await,
            Err(JwtError::UnsupportedAlgorithm("HS256".into()))
        );
        // Claims changed after signing.
        let (signed, signature) = good.rsplit_once('.').unwrap_or_default();
        let header_part = signed.split('.').next().unwrap_or_default();
        let mut forged_claims = claims.clone();
        forged_claims["sub"] = json!("admin");
        let forged = format!("{header_part}.{}.{signature}", b64(&forged_claims));
        assert_eq!(
            v.verifier.verify_at(&forged, NOW).await,
            Err(JwtError::BadSignature)
        );
        for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
            assert!(
                matches!(
                    v.verifier.verify_at(garbage, NOW).await,
                    Err(JwtError::Malformed(_))
                ),
                "{garbage}"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_kid_fetches_the_keys_again_at_most_every_cooldown() {
        let v = verifier(TokenUse::Access).await;
        assert_eq!(v.verifier.keys.fetch_count(), 1, "fetched at start-up");
        // The pool rotates its keys: the file now also has test-key-2.
        jwks_file(
            v.jwks.parent().unwrap_or(Path::new(".")),
            &["test-key-1", "test-key-2"],
        );
        let rotated = sign(&header("test-key-2"), &access_claims(NOW + 600));
        // Right after start-up the cooldown holds: no fetch, still unknown.
        assert_eq!(
            v.verifier.verify_at(&rotated, NOW).await,
            Err(JwtError::UnknownKey("test-key-2".into()))
        );
        assert_eq!(v.verifier.keys.fetch_count(), 1);
        v.clock.advance(UNKNOWN_KID_REFRESH_COOLDOWN);
        assert!(v.verifier.verify_at(&rotated, NOW).await.is_ok());
        assert_eq!(v.verifier.keys.fetch_count(), 2);
        // Known keys need no fetch; made-up kids fetch at most once per cooldown.
        assert!(v.verifier.verify_at(&rotated, NOW).await.is_ok());
        for i in 0..5 {
            let made_up = sign(&header(&format!("made-up-{i}")), &access_claims(NOW + 600));
            assert!(matches!(
                v.verifier.verify_at(&made_up, NOW).await,
                Err(JwtError::UnknownKey(_))
            ));
        }
        assert_eq!(v.verifier.keys.fetch_count(), 2);
        v.clock.advance(UNKNOWN_KID_REFRESH_COOLDOWN);
        let made_up = sign(&header("made-up-again"), &access_claims(NOW + 600));
        assert!(v.verifier.verify_at(&made_up, NOW).await.is_err());
        assert_eq!(v.verifier.keys.fetch_count(), 3);
    }

    #[tokio::test]
    async fn a_failed_fetch_keeps_the_last_good_keys() {
        let v = verifier(TokenUse::Access).await;
        std::fs::write(&v.jwks, "not json").unwrap_or_else(|e| panic!("{e}"));
        assert!(v.verifier.keys.refresh("test").await.is_err());
        let token = sign(&header("test-key-1"), &access_claims(NOW + 600));
        assert!(v.verifier.verify_at(&token, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn a_missing_jwks_file_stops_the_start() {
        let config = jwt_config(PathBuf::from("/nonexistent/jwks.json"), TokenUse::Access);
        let error = JwtVerifier::start(&config, Arc::new(ManualClock::default()))
            .await
            .err()
            .unwrap_or_default();
        assert!(error.contains("jwks_file"), "{error}");
        assert!(error.contains("/nonexistent/jwks.json"), "{error}");
    }

    #[tokio::test]
    async fn keys_are_fetched_over_http_and_kept_when_the_server_fails() {
        use axum::routing::get;
        let jwks = std::fs::read_to_string(fixtures().join("test-jwks.json"))
            .unwrap_or_else(|e| panic!("{e}"));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server_failing = Arc::clone(&failing);
        let app = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let failing = server_failing.load(Ordering::SeqCst);
                let jwks = jwks.clone();
                async move {
                    if failing {
                        (StatusCode::SERVICE_UNAVAILABLE, String::new())
                    } else {
                        (StatusCode::OK, jwks)
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let config = JwtConfig {
            issuer: ISSUER.to_string(),
            client_ids: vec![CLIENT.to_string()],
            jwks_url: Some(format!("http://{addr}/.well-known/jwks.json")),
            ..JwtConfig::default()
        };
        let verifier = JwtVerifier::start(&config, Arc::new(ManualClock::default()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let token = sign(&header("test-key-1"), &access_claims(NOW + 600));
        assert!(verifier.verify_at(&token, NOW).await.is_ok());

        failing.store(true, Ordering::SeqCst);
        let error = verifier
            .keys
            .refresh("test")
            .await
            .err()
            .unwrap_or_default();
        assert!(error.contains("503"), "{error}");
        assert!(
            verifier.verify_at(&token, NOW).await.is_ok(),
            "old keys kept"
        );
    }

    #[tokio::test]
    async fn an_unreachable_jwks_url_does_not_stop_the_start_but_refuses_tokens() {
        let config = JwtConfig {
            issuer: ISSUER.to_string(),
            client_ids: vec![CLIENT.to_string()],
            // Port 9 (discard) on loopback: nothing listens there.
            jwks_url: Some("http://127.0.0.1:9/jwks.json".to_string()),
            ..JwtConfig::default()
        };
        let verifier = JwtVerifier::start(&config, Arc::new(ManualClock::default()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let token = sign(&header("test-key-1"), &access_claims(NOW + 600));
        assert_eq!(
            verifier.verify_at(&token, NOW).await,
            Err(JwtError::UnknownKey("test-key-1".into()))
        );
    }

    #[test]
    fn api_keys_match_by_hash_only() {
        let keys = ApiKeys::new(
            &[
                ApiKeyConfig {
                    name: "a".into(),
                    sha256: sha256_hex(KEY),
                    ..ApiKeyConfig::default()
                },
                ApiKeyConfig {
                    name: "b".into(),
                    sha256: sha256_hex("another").to_uppercase(),
                    ..ApiKeyConfig::default()
                },
            ],
            RateLimitConfig::default().quota(),
        );
        assert_eq!(keys.find(KEY).map(|k| &*k.name), Some("a"));
        assert_eq!(keys.find("another").map(|k| &*k.name), Some("b"));
        assert!(keys.find("wrong").is_none());
        assert!(keys.find("").is_none());
        // The hash itself is not a key.
        assert!(keys.find(&sha256_hex(KEY)).is_none());
    }

    #[test]
    fn config_refuses_policies_without_credentials_and_names_every_problem() {
        let config = AuthConfig {
            rankings: Policy::ApiKey,
            recommendations: Policy::Jwt,
            metrics: Policy::ApiKeyOrJwt,
            ..AuthConfig::default()
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        let joined = problems.join("\n");
        assert_eq!(problems.len(), 3, "{joined}");
        assert!(
            joined.contains("`rankings` = \"api_key\" needs API keys"),
            "{joined}"
        );
        assert!(joined.contains("[[serve.auth.api_keys]]"), "{joined}");
        assert!(
            joined.contains("`recommendations` = \"jwt\" needs a Cognito user pool"),
            "{joined}"
        );
        assert!(
            joined.contains("`metrics` = \"api_key_or_jwt\""),
            "{joined}"
        );

        let config = AuthConfig {
            rankings: Policy::ApiKeyOrJwt,
            api_keys: vec![
                ApiKeyConfig {
                    name: "plain".into(),
                    sha256: "my-secret-key".into(),
                    per_second: Some(-1.0),
                    ..ApiKeyConfig::default()
                },
                ApiKeyConfig {
                    name: "plain".into(),
                    sha256: sha256_hex(KEY),
                    ..ApiKeyConfig::default()
                },
                ApiKeyConfig {
                    name: "again".into(),
                    sha256: sha256_hex(KEY),
                    ..ApiKeyConfig::default()
                },
            ],
            jwt: Some(JwtConfig {
                issuer: format!("{ISSUER}/"),
                jwks_url: Some("http://example.com/jwks.json".into()),
                refresh_interval: Millis::seconds(1),
                ..JwtConfig::default()
            }),
            ..AuthConfig::default()
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        let joined = problems.join("\n");
        for expected in [
            "#1 (plain): `sha256` must be the SHA-256",
            "per_second",
            "the name \"plain\" is used twice",
            "the same key hash is configured twice",
            "ends with `/`",
            "`client_ids` is empty",
            "is plain http",
            "`refresh_interval`",
        ] {
            assert!(joined.contains(expected), "{expected}: {joined}");
        }
        assert_eq!(problems.len(), 8, "{joined}");

        let mut problems = Vec::new();
        AuthConfig::default().validate(&mut problems);
        assert!(problems.is_empty(), "the defaults are valid: {problems:?}");

        // The JWKS is the user pool's own unless told otherwise.
        let pool = JwtConfig {
            issuer: ISSUER.to_string(),
            ..JwtConfig::default()
        };
        assert_eq!(pool.jwks_url(), format!("{ISSUER}/.well-known/jwks.json"));
    }

    // -- through the router ---------------------------------------------------------------

    /// `auth` completed with the test user pool (a JWKS file with the test key, in the returned
    /// directory) and two API keys when it has none, and its security on a manual clock.
    pub(crate) async fn test_security(
        mut auth: AuthConfig,
        rate_limit: RateLimitConfig,
        cors: CorsConfig,
    ) -> (ServeSecurity, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
        if auth.jwt.is_none() {
            auth.jwt = Some(jwt_config(
                jwks_file(dir.path(), &["test-key-1"]),
                TokenUse::Access,
            ));
        }
        if auth.api_keys.is_empty() {
            auth.api_keys = vec![
                ApiKeyConfig {
                    name: "frontend".into(),
                    sha256: sha256_hex(KEY),
                    ..ApiKeyConfig::default()
                },
                ApiKeyConfig {
                    name: "rankings-only".into(),
                    sha256: sha256_hex(RANKINGS_KEY),
                    per_second: Some(0.001),
                    burst: Some(2),
                    groups: vec![RouteGroup::Rankings],
                },
            ];
        }
        let mut problems = Vec::new();
        auth.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
        let jwt = match &auth.jwt {
            Some(config) => Some(
                JwtVerifier::start(config, Arc::clone(&clock))
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            None => None,
        };
        (
            ServeSecurity::assemble(auth, jwt, &rate_limit, &cors, clock),
            dir,
        )
    }

    /// The API over an empty state with [`test_security`].
    pub(crate) async fn secured_router(
        auth: AuthConfig,
        rate_limit: RateLimitConfig,
        cors: CorsConfig,
    ) -> (Router, Arc<ServingState>, tempfile::TempDir) {
        let (security, dir) = test_security(auth, rate_limit, cors).await;
        let state = Arc::new(ServingState::new());
        let app = App::new(Arc::clone(&state), Arc::new(Metrics::new())).with_security(security);
        (app_router(app), state, dir)
    }

    fn no_rate_limit() -> RateLimitConfig {
        RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        }
    }

    pub(crate) struct Answer {
        pub(crate) status: StatusCode,
        pub(crate) headers: HeaderMap,
        pub(crate) body: Value,
    }

    pub(crate) async fn call(router: &Router, request: axum::http::Request<Body>) -> Answer {
        let response = router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(crate) fn get(uri: &str, headers: &[(&str, &str)]) -> axum::http::Request<Body> {
        let mut request = axum::http::Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn assert_unauthorized(answer: &Answer, challenge: &str) {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
        assert_eq!(
            answer.body["error"]["code"], "unauthorized",
            "{}",
            answer.body
        );
        let challenges: Vec<&str> = answer
            .headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert!(
            challenges.iter().any(|c| c.starts_with(challenge)),
            "{challenges:?} has no {challenge}"
        );
    }

    #[tokio::test]
    async fn each_group_follows_its_policy() {
        let auth = AuthConfig {
            rankings: Policy::ApiKey,
            recommendations: Policy::Jwt,
            dashboard: Policy::Open,
            metrics: Policy::ApiKeyOrJwt,
            ..AuthConfig::default()
        };
        let (router, _, _dir) = secured_router(auth, no_rate_limit(), CorsConfig::default()).await;
        let token = valid_token();
        let bearer = format!("Bearer {token}");
        let with_key = [(API_KEY_HEADER, KEY)];
        let with_token = [("authorization", bearer.as_str())];

        // rankings = api_key. (404: nothing computed yet, but the request got through.)
        let portals = "/v1/portals";
        assert_unauthorized(&call(&router, get(portals, &[])).await, "ApiKey");
        assert_eq!(
            call(&router, get(portals, &with_key)).await.status,
            StatusCode::OK
        );
        let answer = call(&router, get(portals, &with_token)).await;
        assert_unauthorized(&answer, "ApiKey");
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not take bearer tokens")),
            "{}",
            answer.body
        );
        let answer = call(&router, get(portals, &[(API_KEY_HEADER, "wrong")])).await;
        assert_unauthorized(&answer, "ApiKey");
        assert_eq!(
            call(&router, get("/v1/portals/g1/popular", &with_key))
                .await
                .status,
            StatusCode::NOT_FOUND
        );

        // metrics = api_key_or_jwt.
        let answer = call(&router, get("/metrics", &[])).await;
        assert_unauthorized(&answer, "ApiKey");
        assert_unauthorized(&answer, "Bearer");
        assert_eq!(
            call(&router, get("/metrics", &with_key)).await.status,
            StatusCode::OK
        );
        assert_eq!(
            call(&router, get("/metrics", &with_token)).await.status,
            StatusCode::OK
        );

        // dashboard = open; another scheme (a proxy's Basic) is ignored, a wrong key refused.
        assert_eq!(call(&router, get("/", &[])).await.status, StatusCode::OK);
        assert_eq!(
            call(
                &router,
                get("/", &[("authorization", "Basic dXNlcjpwYXNz")])
            )
            .await
            .status,
            StatusCode::OK
        );
        assert_unauthorized(
            &call(&router, get("/", &[(API_KEY_HEADER, "wrong")])).await,
            "ApiKey",
        );

        // Probes and the API description are always open.
        for path in ["/healthz", "/openapi.json"] {
            assert_eq!(
                call(&router, get(path, &[])).await.status,
                StatusCode::OK,
                "{path}"
            );
        }
        assert_eq!(
            call(&router, get("/readyz", &[(API_KEY_HEADER, "wrong")]))
                .await
                .status,
            StatusCode::SERVICE_UNAVAILABLE,
            "not loaded, and no 401 for a probe"
        );
    }

    #[tokio::test]
    async fn bearer_tokens_are_verified_through_the_router() {
        let auth = AuthConfig {
            rankings: Policy::Jwt,
            ..AuthConfig::default()
        };
        let (router, _, _dir) = secured_router(auth, no_rate_limit(), CorsConfig::default()).await;
        let bearer = format!("Bearer {}", valid_token());
        assert_eq!(
            call(&router, get("/v1/portals", &[("authorization", &bearer)]))
                .await
                .status,
            StatusCode::OK
        );
        let expired = format!(
            "Bearer {}",
            sign(&header("test-key-1"), &access_claims(unix_now() - 3600))
        );
        let answer = call(&router, get("/v1/portals", &[("authorization", &expired)])).await;
        assert_unauthorized(
            &answer,
            "Bearer realm=\"pageflow\", error=\"invalid_token\"",
        );
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("expired")),
            "{}",
            answer.body
        );
        for (value, says) in [
            (format!("ApiKey {KEY}"), "ApiKey"),
            ("Bearer".to_string(), "no token"),
            ("Basic dXNlcjpwYXNz".to_string(), "Basic"),
        ] {
            let answer = call(&router, get("/v1/portals", &[("authorization", &value)])).await;
            assert_unauthorized(&answer, "Bearer");
            assert!(
                answer.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(says)),
                "{value}: {}",
                answer.body
            );
        }
        let both = [("authorization", bearer.as_str()), (API_KEY_HEADER, KEY)];
        assert_unauthorized(&call(&router, get("/v1/portals", &both)).await, "Bearer");
    }

    #[tokio::test]
    async fn a_key_limited_to_groups_is_forbidden_elsewhere() {
        let auth = AuthConfig {
            rankings: Policy::ApiKey,
            metrics: Policy::ApiKey,
            ..AuthConfig::default()
        };
        let (router, _, _dir) = secured_router(auth, no_rate_limit(), CorsConfig::default()).await;
        let key = [(API_KEY_HEADER, RANKINGS_KEY)];
        assert_eq!(
            call(&router, get("/v1/portals", &key)).await.status,
            StatusCode::OK
        );
        let answer = call(&router, get("/metrics", &key)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
        assert_eq!(answer.body["error"]["code"], "forbidden");
    }

    #[tokio::test]
    async fn callers_over_their_limit_get_429_with_retry_after() {
        let rate_limit = RateLimitConfig {
            enabled: true,
            per_second: 0.5,
            burst: 3,
            ..RateLimitConfig::default()
        };
        let (router, _, _dir) =
            secured_router(AuthConfig::default(), rate_limit, CorsConfig::default()).await;
        for _ in 0..3 {
            assert_eq!(
                call(&router, get("/v1/portals", &[])).await.status,
                StatusCode::OK
            );
        }
        let answer = call(&router, get("/v1/portals", &[])).await;
        assert_eq!(
            answer.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            answer.body
        );
        assert_eq!(answer.body["error"]["code"], "rate_limited");
        assert_eq!(
            answer
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("2"),
            "one token at 0.5/s takes 2 s"
        );
        // The probes are never limited.
        assert_eq!(
            call(&router, get("/healthz", &[])).await.status,
            StatusCode::OK
        );
        // A key has its own bucket (the anonymous one is empty); the rankings-only key has its
        // own, smaller limit: 2, then 429.
        assert_eq!(
            call(&router, get("/v1/portals", &[(API_KEY_HEADER, KEY)]))
                .await
                .status,
            StatusCode::OK
        );
        let key = [(API_KEY_HEADER, RANKINGS_KEY)];
        for _ in 0..2 {
            assert_eq!(
                call(&router, get("/v1/portals", &key)).await.status,
                StatusCode::OK
            );
        }
        let answer = call(&router, get("/v1/portals", &key)).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("rankings-only")),
            "{}",
            answer.body
        );
        // Invalid credentials are charged to the (empty) anonymous bucket: 429, not 401.
        let answer = call(&router, get("/v1/portals", &[(API_KEY_HEADER, "wrong")])).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn anonymous_callers_are_limited_by_address() {
        let rate_limit = RateLimitConfig {
            enabled: true,
            per_second: 0.001,
            burst: 1,
            trust_x_forwarded_for: true,
            ..RateLimitConfig::default()
        };
        let (router, _, _dir) =
            secured_router(AuthConfig::default(), rate_limit, CorsConfig::default()).await;
        let from = |ip: &'static str| get("/v1/portals", &[("x-forwarded-for", ip)]);
        assert_eq!(call(&router, from("10.0.0.1")).await.status, StatusCode::OK);
        assert_eq!(
            call(&router, from("10.0.0.1")).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // The right-most address is the one the balancer appended.
        assert_eq!(
            call(&router, from("10.0.0.1, 10.0.0.2")).await.status,
            StatusCode::OK
        );
        // Without trust, the connection's address counts.
        let rate_limit = RateLimitConfig {
            enabled: true,
            per_second: 0.001,
            burst: 1,
            ..RateLimitConfig::default()
        };
        let (router, _, _dir) =
            secured_router(AuthConfig::default(), rate_limit, CorsConfig::default()).await;
        let with_peer = |forwarded: &'static str, peer: [u8; 4]| {
            let mut request = from(forwarded);
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
            request
        };
        assert_eq!(
            call(&router, with_peer("10.0.0.1", [192, 0, 2, 1]))
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            call(&router, with_peer("10.0.0.9", [192, 0, 2, 1]))
                .await
                .status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            call(&router, with_peer("10.0.0.1", [192, 0, 2, 2]))
                .await
                .status,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn cors_allows_configured_origins_only() {
        let cors = CorsConfig {
            allowed_origins: vec!["https://g1.globo.com".into()],
            ..CorsConfig::default()
        };
        let auth = AuthConfig {
            rankings: Policy::ApiKey,
            ..AuthConfig::default()
        };
        let (router, _, _dir) = secured_router(auth, no_rate_limit(), cors).await;
        let preflight = |origin: &str| {
            axum::http::Request::options("/v1/portals/g1/popular")
                .header("origin", origin)
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "x-api-key")
                .body(Body::empty())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let header_of = |answer: &Answer, name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };

        let answer = call(&router, preflight("https://g1.globo.com")).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        assert_eq!(
            header_of(&answer, "access-control-allow-origin").as_deref(),
            Some("https://g1.globo.com")
        );
        let allowed_headers =
            header_of(&answer, "access-control-allow-headers").unwrap_or_default();
        for name in ["authorization", "x-api-key", "last-event-id"] {
            assert!(allowed_headers.contains(name), "{allowed_headers}");
        }
        assert!(
            header_of(&answer, "access-control-allow-methods")
                .is_some_and(|m| m.contains("GET") && m.contains("OPTIONS"))
        );

        let answer = call(&router, preflight("https://evil.example")).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(answer.body["error"]["code"], "forbidden");
        assert!(
            answer
                .headers
                .keys()
                .all(|name| !name.as_str().starts_with("access-control-")),
            "{:?}",
            answer.headers
        );

        // Actual requests: errors too carry the origin, so the page can read them.
        let answer = call(
            &router,
            get("/v1/portals", &[("origin", "https://g1.globo.com")]),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            header_of(&answer, "access-control-allow-origin").as_deref(),
            Some("https://g1.globo.com")
        );
        assert!(
            header_of(&answer, "access-control-expose-headers")
                .is_some_and(|h| h.contains("retry-after"))
        );
        let answer = call(
            &router,
            get(
                "/v1/portals",
                &[("origin", "https://evil.example"), (API_KEY_HEADER, KEY)],
            ),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer
                .headers
                .keys()
                .all(|name| !name.as_str().starts_with("access-control-")),
            "{:?}",
            answer.headers
        );
        assert_eq!(header_of(&answer, "vary").as_deref(), Some("origin"));
    }

    #[tokio::test]
    async fn handlers_see_the_caller() {
        use axum::Extension;
        use axum::routing::get as get_route;
        let auth = AuthConfig {
            rankings: Policy::ApiKeyOrJwt,
            ..AuthConfig::default()
        };
        let (security, _dir) = test_security(auth, no_rate_limit(), CorsConfig::default()).await;
        let security = Arc::new(security);
        // A route of the rankings group that echoes the caller.
        let router: Router = Router::new()
            .route(
                "/v1/status",
                get_route(
                    |Extension(caller): Extension<Caller>| async move { format!("{caller:?}") },
                ),
            )
            .route_layer(axum::middleware::from_fn_with_state(security, guard));
        let text = |request: axum::http::Request<Body>| {
            let router = router.clone();
            async move {
                let response = router
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let bytes = to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        assert_eq!(
            text(get("/v1/status", &[(API_KEY_HEADER, KEY)])).await,
            "ApiKey { name: \"frontend\" }"
        );
        let bearer = format!("Bearer {}", valid_token());
        assert_eq!(
            text(get("/v1/status", &[("authorization", &bearer)])).await,
            format!("Jwt {{ subject: \"user-1\", client_id: \"{CLIENT}\" }}")
        );
    }
}
