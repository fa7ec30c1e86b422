//! Test helpers shared by the tests of `auth` and its submodules (and, through
//! `auth::tests`, of other modules): the test keys and user pool, signed tokens, JWKS files.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{JwtConfig, TokenUse};

pub(crate) const ISSUER: &str = "https://cognito-idp.sa-east-1.amazonaws.com/sa-east-1_Test";
pub(crate) const CLIENT: &str = "test-app-client";
/// A key whose SHA-256 is configured in the tests.
pub(crate) const KEY: &str = "k3y-for-tests-0123456789abcdef";
/// Another key, limited to the rankings group.
pub(crate) const RANKINGS_KEY: &str = "rankings-only-key";
pub(crate) const NOW: i64 = 1_800_000_000;

pub(crate) fn fixtures() -> PathBuf {
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
    let pem = std::fs::read_to_string(fixtures().join("test-rsa-private.pem")).unwrap();
    let base64: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .unwrap();
    RsaKeyPair::from_pkcs8(&der).unwrap()
}

pub(crate) fn b64(value: &Value) -> String {
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
    .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

pub(crate) fn header(kid: &str) -> Value {
    json!({"alg": "RS256", "kid": kid, "typ": "JWT"})
}

pub(crate) fn access_claims(exp: i64) -> Value {
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
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A token valid for an hour from now (real time), for the router tests.
pub(crate) fn valid_token() -> String {
    sign(&header("test-key-1"), &access_claims(unix_now() + 3600))
}

/// A JWKS file in a fresh directory with the fixture's key under `kids`.
pub(crate) fn jwks_file(dir: &Path, kids: &[&str]) -> PathBuf {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("test-jwks.json")).unwrap())
            .unwrap();
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
    std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
    path
}

pub(crate) fn jwt_config(jwks: PathBuf, token_use: TokenUse) -> JwtConfig {
    JwtConfig {
        issuer: ISSUER.to_string(),
        token_use,
        client_ids: vec![CLIENT.to_string(), "other-allowed-client".to_string()],
        jwks_file: Some(jwks),
        ..JwtConfig::default()
    }
}
