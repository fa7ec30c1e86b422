//! The collector's counters, served at `/metrics` in the Prometheus text format.
//!
//! - `pageflow_collect_requests_total{status}`: requests answered, by HTTP status;
//! - `pageflow_collect_events_accepted_total`: events that passed validation;
//! - `pageflow_collect_events_rejected_total{reason}`: events rejected, by the job's reason code
//!   (or `unknown_portal`), the same codes the answer's `rejected` list gives;
//! - `pageflow_collect_events_written_total{path}`: events made durable, by the path they took
//!   (`kinesis` in this version; `sqs` and `spool` come with the fallbacks);
//! - `pageflow_collect_write_failures_total`: requests answered 503 because some events could not
//!   be written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// The counters (a few per request: a mutex is cheap enough and keeps them consistent).
#[derive(Debug, Default)]
pub struct CollectMetrics {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    requests: BTreeMap<u16, u64>,
    accepted: u64,
    rejected: BTreeMap<&'static str, u64>,
    written: BTreeMap<&'static str, u64>,
    write_failures: u64,
}

impl CollectMetrics {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay meaningful even if a panic interrupted an update.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request answered with `status`.
    pub fn record_request(&self, status: u16) {
        *self.counts().requests.entry(status).or_default() += 1;
    }

    /// Events that passed validation.
    pub fn add_accepted(&self, n: u64) {
        self.counts().accepted += n;
    }

    /// An event rejected for `reason`.
    pub fn record_rejected(&self, reason: &'static str) {
        *self.counts().rejected.entry(reason).or_default() += 1;
    }

    /// Events made durable through `path` (`kinesis`).
    pub fn add_written(&self, path: &'static str, n: u64) {
        *self.counts().written.entry(path).or_default() += n;
    }

    /// A request whose events could not all be written.
    pub fn record_write_failure(&self) {
        self.counts().write_failures += 1;
    }

    /// Events rejected for `reason` so far.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.counts().rejected.get(reason).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let counts = self.counts();
        let mut text = String::new();
        let requests = counts
            .requests
            .iter()
            .map(|(status, n)| (status.to_string(), *n));
        family(
            &mut text,
            "requests_total",
            "Collect requests answered, by HTTP status.",
            "status",
            requests,
        );
        counter(
            &mut text,
            "events_accepted_total",
            "Events that passed validation.",
            counts.accepted,
        );
        let rejected = counts
            .rejected
            .iter()
            .map(|(reason, n)| (reason.to_string(), *n));
        family(
            &mut text,
            "events_rejected_total",
            "Events rejected, by reason.",
            "reason",
            rejected,
        );
        let written = counts
            .written
            .iter()
            .map(|(path, n)| (path.to_string(), *n));
        family(
            &mut text,
            "events_written_total",
            "Events made durable, by the path taken.",
            "path",
            written,
        );
        counter(
            &mut text,
            "write_failures_total",
            "Requests answered 503: events not written.",
            counts.write_failures,
        );
        text
    }
}

/// One unlabelled counter `pageflow_collect_<name>`.
fn counter(text: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        text,
        "# HELP pageflow_collect_{name} {help}\n# TYPE pageflow_collect_{name} counter\npageflow_collect_{name} {value}"
    );
}

/// A counter `pageflow_collect_<name>` with one label, one line per value.
fn family(
    text: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (String, u64)>,
) {
    let _ = writeln!(
        text,
        "# HELP pageflow_collect_{name} {help}\n# TYPE pageflow_collect_{name} counter"
    );
    for (value, n) in values {
        let _ = writeln!(text, "pageflow_collect_{name}{{{label}=\"{value}\"}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_rendered_with_their_labels() {
        let metrics = CollectMetrics::default();
        metrics.record_request(200);
        metrics.record_request(200);
        metrics.add_accepted(3);
        metrics.record_rejected("missing_field");
        metrics.add_written("kinesis", 3);
        let text = metrics.render();
        for line in [
            "pageflow_collect_requests_total{status=\"200\"} 2",
            "pageflow_collect_events_accepted_total 3",
            "pageflow_collect_events_rejected_total{reason=\"missing_field\"} 1",
            "pageflow_collect_events_written_total{path=\"kinesis\"} 3",
            "pageflow_collect_write_failures_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(metrics.rejected("missing_field"), 1);
    }
}
