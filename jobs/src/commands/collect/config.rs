//! The `[collect]` section: where `pageflow collect` listens and which portals it takes pageviews
//! for.
//!
//! ```toml
//! [collect]
//! listen = "127.0.0.1:8090"          # the default
//! spool_dir = "./pageflow-data/collect-spool"   # the last resort: local disk, fsync'd
//! spool_max_bytes = 1073741824        # 1 GiB, the default
//! stop_timeout = "20s"                # on SIGTERM, time to move spooled events off local disk
//!
//! [[collect.portals]]
//! portal = "g1"
//! stream = "pageviews-g1"             # a Kinesis stream name or ARN
//! origins = ["https://g1.globo.com"]  # the pages allowed to send beacons
//! sqs_queue = "pageviews-g1-buffer.fifo" # optional: a FIFO queue for events Kinesis refuses
//!
//! [collect.rate_limit]                # per client address, off by default (see client_limits)
//! enabled = true
//! ```
//!
//! The section is read with the rest of the configuration (`[aws]` says where the AWS APIs are,
//! `PAGEFLOW__COLLECT__LISTEN` overrides `listen`), but only `pageflow collect` checks it
//! ([`CollectConfig::validate`]): the job does not need portals to collect for.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use pageflow_dataflow::config::Millis;
use pageflow_dataflow::event::is_valid_portal;
use pageflow_serve::rate_limit::RateLimitConfig;
use serde::{Deserialize, Serialize};

/// The `[collect]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectConfig {
    /// The address to serve HTTP on (`127.0.0.1:0` picks a free port, announced on start).
    pub listen: String,
    /// The portals whose pageviews are taken, each with its stream.
    pub portals: Vec<CollectPortal>,
    /// Where events are kept on local disk when neither Kinesis nor SQS takes them (the spool,
    /// see `super::spool`); one collector process per directory.
    pub spool_dir: PathBuf,
    /// The most bytes the spool may hold; beyond, requests are answered 503 (default 1 GiB).
    pub spool_max_bytes: u64,
    /// On SIGTERM, how long the collector, once it takes no more requests, keeps moving spooled
    /// events to Kinesis or SQS before it exits (default `20s`; keep it below ECS `stopTimeout`).
    pub stop_timeout: Millis,
    /// Requests per client address (`[collect.rate_limit]`, off by default; see
    /// `super::client_limits`).
    pub rate_limit: RateLimitConfig,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            listen: "127.0.0.1:8090".to_string(),
            portals: Vec::new(),
            spool_dir: PathBuf::from("./pageflow-data/collect-spool"),
            spool_max_bytes: 1 << 30,
            stop_timeout: Millis::seconds(20),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// One `[[collect.portals]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectPortal {
    /// The portal, as events name it in their `portal` field.
    pub portal: String,
    /// The portal's Kinesis stream: a name, or an ARN (`arn:aws:kinesis:…:stream/NAME`).
    pub stream: String,
    /// The page origins (`https://host[:port]`) allowed to send this portal's beacons.
    #[serde(default)]
    pub origins: Vec<String>,
    /// The SQS queue (name or URL) that buffers the portal's events while Kinesis refuses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqs_queue: Option<String>,
}

impl CollectConfig {
    /// Checks the values and returns every problem, each naming the key and what to do.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "[collect] `listen` = `{}` is not an address: write e.g. `127.0.0.1:8090` or `0.0.0.0:8090`",
                self.listen
            ));
        }
        if self.portals.is_empty() {
            problems.push(
                "[collect] lists no portals: add a [[collect.portals]] entry with `portal`, `stream` and `origins` for each portal whose pageviews are collected"
                    .to_string(),
            );
        }
        if self.spool_dir.as_os_str().is_empty() {
            problems.push(
                "[collect] `spool_dir` is empty: name a directory on local disk, e.g. `./pageflow-data/collect-spool`"
                    .to_string(),
            );
        }
        if self.spool_max_bytes < 1 << 20 {
            problems.push(format!(
                "[collect] `spool_max_bytes` = {} is less than 1 MiB, one request's worth: give the spool room for the events of an SQS outage, e.g. 1073741824 (1 GiB)",
                self.spool_max_bytes
            ));
        }
        problems.extend(super::client_limits::validate(&self.rate_limit));
        let mut seen = BTreeSet::new();
        for entry in &self.portals {
            let name = &entry.portal;
            if !is_valid_portal(name) {
                problems.push(format!(
                    "[[collect.portals]] portal `{name}` is not a portal name: 1 to 32 characters of a-z, 0-9 and '-', starting with a letter or digit, as events write it"
                ));
            }
            if !seen.insert(name.as_str()) {
                problems.push(format!(
                    "[[collect.portals]] portal `{name}` is listed twice: keep one entry per portal"
                ));
            }
            if entry.stream.trim().is_empty() {
                problems.push(format!(
                    "[[collect.portals]] portal `{name}`: `stream` is empty: name its Kinesis stream (or give its ARN)"
                ));
            }
            if let Some(queue) = &entry.sqs_queue
                && !queue.trim().is_empty()
                && !queue.trim_end_matches('/').ends_with(".fifo")
            {
                problems.push(format!(
                    "[[collect.portals]] portal `{name}`: sqs_queue `{queue}` is not a FIFO queue (its name must end in `.fifo`): a standard queue gives messages back in any order, and a reader's pageviews must reach Kinesis in order"
                ));
            }
            for origin in &entry.origins {
                if !is_origin(origin) {
                    problems.push(format!(
                        "[[collect.portals]] portal `{name}`: origin `{origin}` is not an origin: write the scheme and host as the browser sends them, e.g. `https://g1.globo.com` (no path, no trailing slash)"
                    ));
                }
            }
            if let Some(queue) = &entry.sqs_queue
                && queue.trim().is_empty()
            {
                problems.push(format!(
                    "[[collect.portals]] portal `{name}`: `sqs_queue` is empty: name the queue or remove the key"
                ));
            }
        }
        problems
    }

    /// The entry of `portal`, if it is collected here.
    pub fn portal(&self, portal: &str) -> Option<&CollectPortal> {
        self.portals.iter().find(|entry| entry.portal == portal)
    }
}

/// Whether `text` is an origin as browsers send it: `http(s)://host[:port]`, nothing after.
fn is_origin(text: &str) -> bool {
    let Some(rest) = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' '])
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portal(name: &str) -> CollectPortal {
        CollectPortal {
            portal: name.to_string(),
            stream: format!("pageviews-{name}"),
            origins: vec![format!("https://{name}.example.com")],
            sqs_queue: None,
        }
    }

    #[test]
    fn a_listed_portal_with_its_stream_is_valid() {
        let config = CollectConfig {
            portals: vec![portal("g1"), portal("ge")],
            ..CollectConfig::default()
        };
        assert_eq!(config.validate(), Vec::<String>::new());
        assert_eq!(config.listen, "127.0.0.1:8090");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut bad = portal("G1");
        bad.stream = " ".to_string();
        bad.origins = vec!["https://g1.example.com/".to_string(), "g1.com".to_string()];
        bad.sqs_queue = Some(String::new());
        let mut standard_queue = portal("gshow");
        standard_queue.sqs_queue = Some("pageviews-gshow-buffer".to_string());
        let config = CollectConfig {
            listen: "localhost".to_string(),
            portals: vec![bad, portal("ge"), portal("ge"), standard_queue],
            spool_dir: PathBuf::new(),
            spool_max_bytes: 1000,
            stop_timeout: Millis::seconds(20),
            rate_limit: RateLimitConfig {
                per_second: 0.0,
                ..RateLimitConfig::default()
            },
        };
        let problems = config.validate();
        for needle in [
            "`listen`",
            "`spool_dir`",
            "`spool_max_bytes` = 1000",
            "is not a FIFO queue",
            "portal `G1` is not a portal name",
            "`stream` is empty",
            "origin `https://g1.example.com/`",
            "origin `g1.com`",
            "`sqs_queue` is empty",
            "portal `ge` is listed twice",
            "[collect.rate_limit] `per_second`",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 11, "{problems:#?}");
    }

    #[test]
    fn no_portals_is_a_problem() {
        let problems = CollectConfig::default().validate();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("no portals"));
    }
}
