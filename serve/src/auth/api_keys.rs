//! API keys: the checks of `[[serve.auth.api_keys]]`, the SHA-256 hashes of the configured
//! keys, and the constant-time lookup of a presented key among them.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiKeyConfig, RouteGroup};
use crate::rate_limit::{Quota, RateLimitConfig};

impl ApiKeyConfig {
    pub(super) fn validate(&self, index: usize, problems: &mut Vec<String>) {
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
            if let Err(problem) = crate::rate_limit::check_quota(
                &at,
                self.per_second.unwrap_or(defaults.per_second),
                self.burst.unwrap_or(defaults.burst),
            ) {
                problems.push(problem);
            }
        }
    }
}

/// The 32 bytes of a 64-hex-digit SHA-256.
pub(super) fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
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

#[derive(Debug)]
pub(super) struct ApiKey {
    pub(super) name: Arc<str>,
    hash: [u8; 32],
    pub(super) quota: Option<Quota>,
    pub(super) groups: Vec<RouteGroup>,
}

/// The configured keys.
#[derive(Debug, Default)]
pub(super) struct ApiKeys {
    pub(super) keys: Vec<ApiKey>,
}

impl ApiKeys {
    pub(super) fn new(configs: &[ApiKeyConfig], default: Quota) -> Self {
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

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose hash is the hash of `presented`. Every configured hash is compared, in
    /// constant time, whatever matches.
    pub(super) fn find(&self, presented: &str) -> Option<&ApiKey> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{KEY, sha256_hex};

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
}
