//! Who may call which endpoint: API keys, Amazon Cognito JWTs, and a policy per route group.
//!
//! # Route groups and policies
//!
//! Every route belongs to a group ([`ROUTES`] is the one list, also checked against the router
//! and the OpenAPI document): `rankings` (popular, trending, related, the portal list, the SSE
//! change streams, `/v1/status` and `/v1/job`), `recommendations`, `dashboard` (the live page at `/`) and
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
//! [`crate::cors`]), but the browser's `EventSource` cannot send headers at all: pages that follow
//! the SSE change streams of a guarded `rankings` group need a fetch-based SSE client.
//!
//! Errors use the API's error body: 401 `unauthorized` (no, unknown, malformed, expired or
//! otherwise invalid credentials; with `WWW-Authenticate` naming what the endpoint takes), 403
//! `forbidden` (a valid key that is not allowed for the group), 429 `rate_limited` (see
//! [`crate::rate_limit`]).
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
//! The signature, the algorithm, `iss` and `aud` are checked by the `jsonwebtoken` crate; the
//! rest, and the JWKS cache, in `auth/jwt.rs`.
//!
//! The JWKS is fetched from `jwks_url` (default `<issuer>/.well-known/jwks.json`) at start-up,
//! every `refresh_interval`, and when a token names a `kid` that is not known (a key rotation),
//! at most once per [`UNKNOWN_KID_REFRESH_COOLDOWN`] so that made-up `kid`s cannot make the job
//! hammer Cognito. A failed fetch keeps the last good keys and is logged; a failed start-up fetch
//! does not stop the job (tokens are refused until a fetch succeeds, retried every 30 s). With
//! `jwks_file` the keys are read from a file instead (offline use and tests): it must be readable
//! at start-up, and is read again on the same occasions.

mod api_keys;
mod jwt;
#[cfg(test)]
pub(crate) mod test_support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pageflow_dataflow::config::Millis;
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::cors::{Cors, CorsConfig};
use crate::rate_limit::{Decision, Quota, RateLimitConfig, RateLimiter};
use api_keys::{ApiKeys, parse_sha256_hex};
use jwt::JwtVerifier;
pub use jwt::UNKNOWN_KID_REFRESH_COOLDOWN;
use pageflow_dataflow::clock::{Clock, SystemClock};

/// The header API keys are sent in.
pub const API_KEY_HEADER: &str = "x-api-key";
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

/// One route of the API: its path as documented and as written in the router, and who may
/// reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The path template as documented, e.g. `/v1/portals/{portal}/popular`.
    pub path: &'static str,
    /// The path template as written in the router: the same as `path`, except where the router
    /// needs a catch-all (article ids may contain `/`).
    pub router_path: &'static str,
    /// Who may reach it.
    pub access: RouteAccess,
}

const fn open(path: &'static str) -> Route {
    Route {
        path,
        router_path: path,
        access: RouteAccess::AlwaysOpen,
    }
}

const fn grouped(path: &'static str, group: RouteGroup) -> Route {
    Route {
        path,
        router_path: path,
        access: RouteAccess::Group(group),
    }
}

/// A route the router matches with another template than the documented one.
const fn grouped_as(path: &'static str, router_path: &'static str, group: RouteGroup) -> Route {
    Route {
        path,
        router_path,
        access: RouteAccess::Group(group),
    }
}

/// The router's template of `GET /v1/articles/{article_id}/related`: article ids may contain
/// `/` (they are often URL paths), so the router takes everything after `/v1/articles/` and the
/// handler splits off the trailing `/related`.
pub const RELATED_ROUTER_PATH: &str = "/v1/articles/{*article_id_then_related}";

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
    grouped("/v1/job", RouteGroup::Rankings),
    grouped("/v1/portals", RouteGroup::Rankings),
    grouped("/v1/portals/{portal}/popular", RouteGroup::Rankings),
    grouped("/v1/portals/{portal}/trending", RouteGroup::Rankings),
    grouped("/v1/portals/{portal}/popular/stream", RouteGroup::Rankings),
    grouped("/v1/portals/{portal}/trending/stream", RouteGroup::Rankings),
    grouped_as(
        "/v1/articles/{article_id}/related",
        RELATED_ROUTER_PATH,
        RouteGroup::Rankings,
    ),
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
        .find(|route| route.router_path == path)
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
/// verifier, rate limits and CORS rules.
#[derive(Debug)]
pub struct ServeSecurity {
    auth: AuthConfig,
    api_keys: ApiKeys,
    jwt: Option<Arc<JwtVerifier>>,
    limits: Option<Limits>,
    pub(crate) cors: Option<Arc<Cors>>,
}

impl Default for ServeSecurity {
    fn default() -> Self {
        ServeSecurity::open()
    }
}

impl ServeSecurity {
    /// Every route open, no rate limit, no CORS: what [`crate::App::new`] starts with.
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

    /// The security that `[serve.auth]`, `[serve.rate_limit]` and `[serve.cors]` configure; the JWKS,
    /// when a user pool is configured, is fetched before this returns, and then kept fresh by a
    /// task on the current tokio runtime.
    pub async fn start(
        auth: &AuthConfig,
        rate_limit: &RateLimitConfig,
        cors: &CorsConfig,
    ) -> Result<Self, String> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let jwt = match &auth.jwt {
            Some(config) => Some(JwtVerifier::start(config, Arc::clone(&clock)).await?),
            None => None,
        };
        Ok(Self::assemble(auth.clone(), jwt, rate_limit, cors, clock))
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
        ServeSecurity {
            auth,
            api_keys,
            jwt,
            limits,
            cors: Cors::new(cors).map(Arc::new),
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
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::{App, ServingState, app_router};
    use pageflow_dataflow::clock::ManualClock;
    use pageflow_metrics::Metrics;
    // `KEY` is re-exported: other modules' tests (e.g. `openapi`) take it from here.
    pub(crate) use super::test_support::KEY;
    use super::test_support::{
        CLIENT, ISSUER, RANKINGS_KEY, access_claims, header, jwks_file, jwt_config, sha256_hex,
        sign, unix_now, valid_token,
    };

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
        let dir = tempfile::tempdir().unwrap();
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
                    .unwrap(),
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
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
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
        request.body(Body::empty()).unwrap()
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
                .unwrap()
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
                let response = router.oneshot(request).await.unwrap();
                let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
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
