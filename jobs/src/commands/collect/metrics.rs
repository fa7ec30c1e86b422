//! The collector's metrics, served at `/metrics` in the Prometheus text format (through
//! `prometheus_client`, as the job's own metrics are).
//!
//! - `pageflow_collect_requests_total{status}`: requests answered, by HTTP status;
//! - `pageflow_collect_events_accepted_total`: events that passed validation;
//! - `pageflow_collect_events_rejected_total{reason}`: events rejected, by the job's reason code
//!   (or `unknown_portal`, `origin_not_allowed`), the same codes the answer's `rejected` list gives;
//! - `pageflow_collect_events_written_total{path}`: events made durable, by the path they took:
//!   `kinesis`, `sqs` (the portal's buffer queue) or `spool` (the local disk);
//! - `pageflow_collect_write_failures_total`: requests answered 503 because some events were
//!   durable nowhere;
//! - `pageflow_collect_events_drained_total{path}`: buffered events moved on: `sqs` and `spool`
//!   to Kinesis, `spool_to_sqs` from the spool to the end of the SQS queue;
//! - `pageflow_collect_drain_lag_seconds{portal,path}`: how long the oldest event still buffered
//!   has waited (0 when nothing is): the delay the buffer adds to the job's input;
//! - `pageflow_collect_spool_events{portal}` and `pageflow_collect_spool_bytes`: what the spool
//!   holds; `pageflow_collect_spool_full_total`: events refused because it was full.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortalLabel {
    portal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortalPathLabel {
    portal: String,
    path: String,
}

/// The collector's metrics.
#[derive(Debug)]
pub struct CollectMetrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    accepted: Counter,
    rejected: Family<ReasonLabel, Counter>,
    written: Family<PathLabel, Counter>,
    write_failures: Counter,
    drained: Family<PathLabel, Counter>,
    drain_lag_seconds: Family<PortalPathLabel, Gauge<f64, AtomicU64>>,
    spool_events: Family<PortalLabel, Gauge>,
    spool_bytes: Gauge,
    spool_full: Counter,
}

impl Default for CollectMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pageflow_collect");
        let requests = Family::default();
        registry.register(
            "requests",
            "Collect requests answered, by HTTP status",
            requests.clone(),
        );
        let accepted = Counter::default();
        registry.register(
            "events_accepted",
            "Events that passed validation",
            accepted.clone(),
        );
        let rejected = Family::default();
        registry.register(
            "events_rejected",
            "Events rejected, by reason",
            rejected.clone(),
        );
        let written = Family::default();
        registry.register(
            "events_written",
            "Events made durable, by the path taken (kinesis, sqs, spool)",
            written.clone(),
        );
        let write_failures = Counter::default();
        registry.register(
            "write_failures",
            "Requests answered 503: events durable nowhere",
            write_failures.clone(),
        );
        let drained = Family::default();
        registry.register(
            "events_drained",
            "Buffered events moved to Kinesis, by where they were buffered",
            drained.clone(),
        );
        let drain_lag_seconds = Family::default();
        registry.register(
            "drain_lag_seconds",
            "Age of the oldest event still buffered, by portal and buffer (0 when empty)",
            drain_lag_seconds.clone(),
        );
        let spool_events = Family::default();
        registry.register(
            "spool_events",
            "Events in the local spool, by portal",
            spool_events.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes the local spool holds",
            spool_bytes.clone(),
        );
        let spool_full = Counter::default();
        registry.register(
            "spool_full",
            "Events refused because the local spool was full",
            spool_full.clone(),
        );
        CollectMetrics {
            registry,
            requests,
            accepted,
            rejected,
            written,
            write_failures,
            drained,
            drain_lag_seconds,
            spool_events,
            spool_bytes,
            spool_full,
        }
    }
}

impl CollectMetrics {
    /// A request answered with `status`.
    pub fn record_request(&self, status: u16) {
        self.requests.get_or_create(&StatusLabel { status }).inc();
    }

    /// Events that passed validation.
    pub fn add_accepted(&self, n: u64) {
        self.accepted.inc_by(n);
    }

    /// An event rejected for `reason`.
    pub fn record_rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Events made durable through `path` (`kinesis`, `sqs`, `spool`).
    pub fn add_written(&self, path: &str, n: u64) {
        if n > 0 {
            self.written
                .get_or_create(&PathLabel {
                    path: path.to_string(),
                })
                .inc_by(n);
        }
    }

    /// A request whose events could not all be made durable.
    pub fn record_write_failure(&self) {
        self.write_failures.inc();
    }

    /// Buffered events (from `path`) now in Kinesis.
    pub fn add_drained(&self, path: &str, n: u64) {
        self.drained
            .get_or_create(&PathLabel {
                path: path.to_string(),
            })
            .inc_by(n);
    }

    /// The age of `portal`'s oldest event buffered in `path`.
    pub fn set_drain_lag(&self, portal: &str, path: &str, seconds: f64) {
        self.drain_lag_seconds
            .get_or_create(&PortalPathLabel {
                portal: portal.to_string(),
                path: path.to_string(),
            })
            .set(seconds);
    }

    /// What the spool holds for `portal`, and in all.
    pub fn set_spool(&self, portal: &str, events: u64, total_bytes: u64) {
        self.spool_events
            .get_or_create(&PortalLabel {
                portal: portal.to_string(),
            })
            .set(i64::try_from(events).unwrap_or(i64::MAX));
        self.spool_bytes
            .set(i64::try_from(total_bytes).unwrap_or(i64::MAX));
    }

    /// Events refused by a full spool.
    pub fn add_spool_full(&self, n: u64) {
        self.spool_full.inc_by(n);
    }

    /// Events rejected for `reason` so far.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
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
        metrics.add_written("kinesis", 2);
        metrics.add_written("sqs", 1);
        metrics.add_drained("sqs", 1);
        metrics.set_drain_lag("g1", "spool", 1.5);
        metrics.set_spool("g1", 4, 800);
        let text = metrics.render();
        for line in [
            "pageflow_collect_requests_total{status=\"200\"} 2",
            "pageflow_collect_events_accepted_total 3",
            "pageflow_collect_events_rejected_total{reason=\"missing_field\"} 1",
            "pageflow_collect_events_written_total{path=\"kinesis\"} 2",
            "pageflow_collect_events_written_total{path=\"sqs\"} 1",
            "pageflow_collect_events_drained_total{path=\"sqs\"} 1",
            "pageflow_collect_drain_lag_seconds{portal=\"g1\",path=\"spool\"} 1.5",
            "pageflow_collect_spool_events{portal=\"g1\"} 4",
            "pageflow_collect_spool_bytes 800",
            "pageflow_collect_write_failures_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(metrics.rejected("missing_field"), 1);
        assert_eq!(metrics.rejected("bad_pattern"), 0);
    }
}
