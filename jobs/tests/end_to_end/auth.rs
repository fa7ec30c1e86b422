//! End-to-end tests of the HTTP API's security through the `pageflow` binary: the configuration
//! is refused when a policy needs credentials that are not configured, and a running job guards
//! its route groups with API keys and Cognito tokens (a JWKS file), limits callers by address,
//! and answers CORS preflights. The unit tests of `serve::auth` cover the details.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pageflow_tests::job_process::JobProcess;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");
const ISSUER: &str = "https://cognito-idp.sa-east-1.amazonaws.com/sa-east-1_EndToEnd";
const CLIENT: &str = "e2e-app-client";
const KEY: &str = "end-to-end-test-key-7f3a";

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../serve/tests/fixtures/jwt")
}

#[test]
fn run_refuses_policies_without_credentials_and_says_all_at_once() {
    let out = Command::new(BIN)
        .arg("run")
        .env("PAGEFLOW__SERVE__AUTH__RANKINGS", "api_key")
        .env("PAGEFLOW__SERVE__AUTH__METRICS", "jwt")
        .env("PAGEFLOW__SERVE__CORS__ALLOWED_ORIGINS", "[\"*\"]")
        .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "`rankings` = \"api_key\" needs API keys",
        "[[serve.auth.api_keys]]",
        "`metrics` = \"jwt\" needs a Cognito user pool",
        "wildcard",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// An answer: status, headers (names in lowercase) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn code(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|body| body["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 request to `addr` (`127.0.0.1:PORT`) with `Connection: close`.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let port = addr
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"));
    let response = pageflow_tests::aws::http_request(port, method, path, headers, b"")
        .unwrap_or_else(|e| panic!("{method} {path} at {addr}: {e}"));
    Answer {
        status: response.status,
        body: response.text(),
        headers: response.headers,
    }
}

fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(addr, "GET", path, headers)
}

/// A Cognito-style access token signed with the test-only key of `serve/tests/fixtures/jwt`.
fn token(exp_from_now: i64) -> String {
    let pem = std::fs::read_to_string(fixtures().join("test-rsa-private.pem")).unwrap();
    let der = STANDARD
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let pair = RsaKeyPair::from_pkcs8(&der).unwrap();
    let now = (pageflow_dataflow::clock::unix_now_ms() / 1000) as i64;
    let header = json!({"alg": "RS256", "kid": "test-key-1"});
    let claims = json!({
        "sub": "reader-1", "iss": ISSUER, "token_use": "access", "client_id": CLIENT,
        "exp": now + exp_from_now, "iat": now,
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[test]
fn run_guards_route_groups_limits_callers_and_answers_cors() {
    let dir = tempfile::tempdir().unwrap();
    let key_sha256: String = Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let jwks = fixtures().join("test-jwks.json");
    let mut job = JobProcess::spawn(
        Command::new(BIN)
            .arg("run")
            .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
            .env("PAGEFLOW__SINKS__DIR", dir.path())
            .env("PAGEFLOW__CHECKPOINT__ENABLED", "false")
            .env("PAGEFLOW__SOURCE__EVENTS_PER_SECOND", "100")
            .env("PAGEFLOW__SERVE__AUTH__RANKINGS", "api_key_or_jwt")
            .env("PAGEFLOW__SERVE__AUTH__METRICS", "jwt")
            .env(
                "PAGEFLOW__SERVE__AUTH__API_KEYS",
                format!("[{{name = \"e2e\", sha256 = \"{key_sha256}\"}}]"),
            )
            .env("PAGEFLOW__SERVE__AUTH__JWT__ISSUER", ISSUER)
            .env(
                "PAGEFLOW__SERVE__AUTH__JWT__CLIENT_IDS",
                format!("[\"{CLIENT}\"]"),
            )
            .env(
                "PAGEFLOW__SERVE__AUTH__JWT__JWKS_FILE",
                format!("\"{}\"", jwks.display()),
            )
            // Four requests per address, then one every 1000 s.
            .env("PAGEFLOW__SERVE__RATE_LIMIT__ENABLED", "true")
            .env("PAGEFLOW__SERVE__RATE_LIMIT__PER_SECOND", "0.001")
            .env("PAGEFLOW__SERVE__RATE_LIMIT__BURST", "4")
            .env(
                "PAGEFLOW__SERVE__CORS__ALLOWED_ORIGINS",
                "[\"https://g1.globo.com\"]",
            )
            .env("RUST_LOG", "warn"),
    )
    .unwrap();
    // The job announces its address once it serves (or exits).
    let addr = job.http_address(Duration::from_secs(60)).unwrap();

    // Probes are open.
    assert_eq!(get(&addr, "/healthz", &[]).status, 200);

    // rankings = api_key_or_jwt. Anonymous: 401 naming both schemes (address token 1).
    let answer = get(&addr, "/v1/portals", &[]);
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.code(), "unauthorized");
    let challenges = answer.header("www-authenticate").join(" | ");
    assert!(
        challenges.contains("ApiKey") && challenges.contains("Bearer"),
        "{challenges}"
    );
    assert_eq!(get(&addr, "/v1/portals", &[("x-api-key", KEY)]).status, 200);
    let bearer = format!("Bearer {}", token(3600));
    assert_eq!(
        get(&addr, "/v1/portals", &[("authorization", &bearer)]).status,
        200
    );

    // metrics = jwt: a key is refused (address token 2), a token is accepted.
    let answer = get(&addr, "/metrics", &[("x-api-key", KEY)]);
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer.body.contains("does not take API keys"),
        "{}",
        answer.body
    );
    let answer = get(&addr, "/metrics", &[("authorization", &bearer)]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("pageflow_events_in_total"));
    // An expired token (address token 3).
    let expired = format!("Bearer {}", token(-3600));
    let answer = get(&addr, "/metrics", &[("authorization", &expired)]);
    assert_eq!(answer.status, 401);
    assert!(
        answer
            .header("www-authenticate")
            .iter()
            .any(|c| c.contains("invalid_token")),
        "{:?}",
        answer.headers
    );

    // dashboard = open (address token 4), then the address is out of tokens.
    assert_eq!(get(&addr, "/", &[]).status, 200);
    let answer = get(&addr, "/", &[]);
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.code(), "rate_limited");
    let retry_after: u64 = answer
        .header("retry-after")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no whole-second Retry-After: {:?}", answer.headers));
    assert!((900..=1000).contains(&retry_after), "{retry_after}");
    // The key has its own bucket; probes are never limited.
    assert_eq!(get(&addr, "/v1/portals", &[("x-api-key", KEY)]).status, 200);
    let status = get(&addr, "/readyz", &[]).status;
    assert!(status == 200 || status == 503, "{status}");

    // CORS: the configured origin's preflight is answered, another origin's is refused.
    let preflight = |origin: &str| {
        request(
            &addr,
            "OPTIONS",
            "/v1/portals/g1/popular",
            &[
                ("origin", origin),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-api-key"),
            ],
        )
    };
    let answer = preflight("https://g1.globo.com");
    assert_eq!(answer.status, 204);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        ["https://g1.globo.com"]
    );
    let answer = preflight("https://elsewhere.example");
    assert_eq!(answer.status, 403);
    assert!(answer.header("access-control-allow-origin").is_empty());
}
