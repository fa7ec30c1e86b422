//! Amazon Cognito JWTs: the checks of `[serve.auth.jwt]`, the JWKS source (a URL or a file) and
//! the cache of the user pool's signing keys with its refreshes, and [`JwtVerifier`], which
//! verifies RS256 bearer tokens (the steps are in the [`super`] module docs).
//!
//! The cryptography and the standard checks stand on the `jsonwebtoken` crate (with its aws-lc-rs
//! backend, the crypto rustls already uses here): the RS256 signature, the algorithm allow-list,
//! the header's form, `iss`, and `aud` of ID tokens. On top, this module keeps what is Cognito's
//! or ours: the `kid` lookup in the cached JWKS, `alg` refused by name before any key is looked
//! up, `token_use`, `client_id` of access tokens, and `exp`/`nbf` with the leeway, compared with
//! the `now` the verifier is given (the library reads the system clock, which tests cannot set).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, Uri, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{JwtConfig, TokenUse};
use pageflow_dataflow::clock::Clock;

/// The least time between two JWKS fetches caused by tokens naming an unknown `kid`.
pub const UNKNOWN_KID_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);
/// After a failed fetch, the periodic refresh tries again this soon.
const FAILED_REFRESH_RETRY: Duration = Duration::from_secs(30);
/// A JWKS fetch must be answered within this time.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

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

    pub(super) fn validate(&self, problems: &mut Vec<String>) {
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

type KeySet = HashMap<String, Arc<DecodingKey>>;

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
        keys.insert(kid, Arc::new(DecodingKey::from_rsa_raw_components(&n, &e)));
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
    async fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
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

/// Verifies Cognito tokens (see the [`super`] module docs for the steps).
#[derive(Debug)]
pub(crate) struct JwtVerifier {
    issuer: String,
    token_use: TokenUse,
    client_ids: Vec<String>,
    leeway_secs: i64,
    /// What `jsonwebtoken` checks: RS256 only, the signature, `iss`, and for ID tokens `aud`.
    validation: Validation,
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
        // The aws-lc-rs backend, the one rustls already uses here. Installed explicitly so that a
        // second backend enabled by another crate cannot make the library's choice ambiguous (it
        // would panic); when a provider is already installed this changes nothing.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
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
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["iss"]);
        // `exp` and `nbf` are compared in `verify_at` with the `now` it is given: the library
        // reads the system clock, which the tests of the leeway cannot set.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        match config.token_use {
            // Access tokens name their app client in `client_id`, checked in `verify_at`.
            TokenUse::Access => validation.validate_aud = false,
            TokenUse::Id => validation.set_audience(&config.client_ids),
        }
        JwtVerifier {
            issuer: config.issuer.clone(),
            token_use: config.token_use,
            client_ids: config.client_ids.clone(),
            leeway_secs: i64::try_from(config.leeway.ms() / 1000).unwrap_or(i64::MAX),
            validation,
            keys,
        }
    }

    /// Verifies `token` now.
    pub(crate) async fn verify(&self, token: &str) -> Result<VerifiedToken, JwtError> {
        let now = pageflow_dataflow::clock::unix_now_ms() / 1000;
        self.verify_at(token, i64::try_from(now).unwrap_or(i64::MAX))
            .await
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub(crate) async fn verify_at(&self, token: &str, now: i64) -> Result<VerifiedToken, JwtError> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Audience {
            One(String),
            Many(Vec<String>),
        }
        #[derive(Deserialize)]
        struct CognitoClaims {
            /// Checked by `jsonwebtoken`; read here only so that an `iss` that is not one string
            /// (an array, which the library would accept if one entry matched) is malformed.
            #[serde(rename = "iss")]
            _single_issuer: Option<String>,
            sub: Option<String>,
            exp: Option<f64>,
            nbf: Option<f64>,
            token_use: Option<String>,
            client_id: Option<String>,
            aud: Option<Audience>,
        }

        let kid = signing_key_id(token)?;
        let key = self
            .keys
            .key(&kid)
            .await
            .ok_or_else(|| JwtError::UnknownKey(kid.clone()))?;
        let claims = jsonwebtoken::decode::<CognitoClaims>(token, &key, &self.validation)
            .map_err(|error| self.refusal(token, &error))?
            .claims;

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
                // `jsonwebtoken` checked that one audience is an accepted client when `aud` is
                // present; its presence and which client it names are checked here.
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

    /// Why `jsonwebtoken` refused `token`, in this module's terms. The claims named in the
    /// message are read from the token again: the library refuses `iss` and `aud` only after the
    /// signature has verified, so they are the issuer's words, not an attacker's.
    fn refusal(&self, token: &str, error: &jsonwebtoken::errors::Error) -> JwtError {
        use jsonwebtoken::errors::ErrorKind;
        #[derive(Deserialize)]
        struct Named {
            iss: Option<serde_json::Value>,
            aud: Option<serde_json::Value>,
        }
        let named = || {
            jsonwebtoken::dangerous::insecure_decode_claims::<Named>(token).unwrap_or(Named {
                iss: None,
                aud: None,
            })
        };
        let text = |value: Option<serde_json::Value>| match value {
            Some(serde_json::Value::String(text)) => text,
            Some(serde_json::Value::Array(values)) => values
                .iter()
                .map(|value| {
                    value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_string)
                })
                .collect::<Vec<_>>()
                .join(","),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        match error.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer {
                found: text(named().iss),
                expected: self.issuer.clone(),
            },
            ErrorKind::InvalidAudience => JwtError::WrongClient {
                found: text(named().aud),
                claim: "aud",
            },
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                JwtError::MissingClaim("iss")
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                JwtError::Malformed(format!("the `{claim}` claim does not have its JSON type"))
            }
            ErrorKind::Json(error) => {
                JwtError::Malformed(format!("the claims are not the expected JSON: {error}"))
            }
            ErrorKind::Base64(_) => JwtError::Malformed("a part is not base64url".into()),
            _ => JwtError::Malformed(error.to_string()),
        }
    }
}

/// The `kid` of `token`'s header, after the checks that come before any key is looked up: three
/// parts, `alg` RS256 (so `none` and `HS256` never reach a key and are named in the refusal), no
/// critical extensions. `jsonwebtoken` checks the header again when it verifies the token.
fn signing_key_id(token: &str) -> Result<String, JwtError> {
    #[derive(Deserialize)]
    struct JoseHeader {
        alg: String,
        kid: Option<String>,
        crit: Option<serde_json::Value>,
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(_claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three parts".into()));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::Malformed("the header is not base64url".into()))?;
    let header: JoseHeader = serde_json::from_slice(&header)
        .map_err(|e| JwtError::Malformed(format!("the header is not the expected JSON: {e}")))?;
    if header.alg != "RS256" {
        return Err(JwtError::UnsupportedAlgorithm(header.alg));
    }
    if header.crit.is_some() {
        return Err(JwtError::Malformed(
            "the header has critical extensions (crit)".into(),
        ));
    }
    header
        .kid
        .ok_or_else(|| JwtError::Malformed("the header has no kid".into()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use axum::Router;
    use serde_json::{Value, json};

    use super::*;
    use crate::auth::test_support::{
        CLIENT, ISSUER, NOW, access_claims, b64, fixtures, header, jwks_file, jwt_config, sign,
    };
    use pageflow_dataflow::clock::ManualClock;

    struct Verifier {
        verifier: Arc<JwtVerifier>,
        clock: Arc<ManualClock>,
        jwks: PathBuf,
        _dir: tempfile::TempDir,
    }

    async fn verifier(token_use: TokenUse) -> Verifier {
        let dir = tempfile::tempdir().unwrap();
        let jwks = jwks_file(dir.path(), &["test-key-1"]);
        let clock = Arc::new(ManualClock::default());
        let verifier = JwtVerifier::start(&jwt_config(jwks.clone(), token_use), clock.clone())
            .await
            .unwrap();
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
    async fn refusals_by_the_library_name_the_claim_at_fault() {
        let v = verifier(TokenUse::Access).await;
        let mut claims = access_claims(NOW + 600);
        claims.as_object_mut().map(|c| c.remove("iss"));
        assert_eq!(
            v.verifier
                .verify_at(&sign(&header("test-key-1"), &claims), NOW)
                .await,
            Err(JwtError::MissingClaim("iss"))
        );
        // RFC 7519's `iss` is one string: an array naming the pool is not accepted.
        claims["iss"] = json!([ISSUER, "https://elsewhere"]);
        assert!(matches!(
            v.verifier
                .verify_at(&sign(&header("test-key-1"), &claims), NOW)
                .await,
            Err(JwtError::Malformed(_))
        ));
        // A number where a time is expected.
        let mut claims = access_claims(NOW + 600);
        claims["exp"] = json!("tomorrow");
        assert!(matches!(
            v.verifier
                .verify_at(&sign(&header("test-key-1"), &claims), NOW)
                .await,
            Err(JwtError::Malformed(_))
        ));
        // Critical header extensions are refused, even when the signature is good.
        let crit = json!({"alg": "RS256", "kid": "test-key-1", "crit": ["b64"], "b64": true});
        assert!(matches!(
            v.verifier
                .verify_at(&sign(&crit, &access_claims(NOW + 600)), NOW)
                .await,
            Err(JwtError::Malformed(_))
        ));
        // A signature from another token (valid, but not over these bytes).
        let other = sign(&header("test-key-1"), &access_claims(NOW + 601));
        let good = sign(&header("test-key-1"), &access_claims(NOW + 600));
        let (signed, _) = good.rsplit_once('.').unwrap();
        let (_, other_signature) = other.rsplit_once('.').unwrap();
        assert_eq!(
            v.verifier
                .verify_at(&format!("{signed}.{other_signature}"), NOW)
                .await,
            Err(JwtError::BadSignature)
        );
    }

    #[tokio::test]
    async fn id_tokens_may_name_several_audiences_and_must_name_one() {
        let v = verifier(TokenUse::Id).await;
        let claims = |aud: Option<Value>| {
            let mut claims =
                json!({"sub": "user-2", "iss": ISSUER, "token_use": "id", "exp": NOW + 600});
            if let Some(aud) = aud {
                claims["aud"] = aud;
            }
            sign(&header("test-key-1"), &claims)
        };
        assert_eq!(
            v.verifier
                .verify_at(
                    &claims(Some(json!(["stranger", "other-allowed-client"]))),
                    NOW
                )
                .await,
            Ok(VerifiedToken {
                subject: "user-2".into(),
                client_id: "other-allowed-client".into()
            })
        );
        assert_eq!(
            v.verifier
                .verify_at(&claims(Some(json!(["stranger", "another"]))), NOW)
                .await,
            Err(JwtError::WrongClient {
                found: "stranger,another".into(),
                claim: "aud"
            })
        );
        assert_eq!(
            v.verifier.verify_at(&claims(None), NOW).await,
            Err(JwtError::MissingClaim("aud"))
        );
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
        std::fs::write(&v.jwks, "not json").unwrap();
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
        let jwks = std::fs::read_to_string(fixtures().join("test-jwks.json")).unwrap();
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let config = JwtConfig {
            issuer: ISSUER.to_string(),
            client_ids: vec![CLIENT.to_string()],
            jwks_url: Some(format!("http://{addr}/.well-known/jwks.json")),
            ..JwtConfig::default()
        };
        let verifier = JwtVerifier::start(&config, Arc::new(ManualClock::default()))
            .await
            .unwrap();
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
            .unwrap();
        let token = sign(&header("test-key-1"), &access_claims(NOW + 600));
        assert_eq!(
            verifier.verify_at(&token, NOW).await,
            Err(JwtError::UnknownKey("test-key-1".into()))
        );
    }
}
