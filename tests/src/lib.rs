//! Shared helpers for pageflow's integration tests (the tests themselves live in `tests/tests/integration/`).

pub mod aws;
pub mod clients;
pub mod fake_personalize;
pub mod fault_proxy;
pub mod job_process;
pub mod kinesis_local;

use pageflow_dataflow::config::{Millis, SemanticsConfig};
use pageflow_dataflow::event::{RawRecord, SourcePosition};
use pageflow_dataflow::source::{SourcesByWorker, VecSource};

/// A small configuration whose windows, gaps and intervals are a few seconds, so that random inputs
/// of a few dozen events exercise every boundary.
pub fn small_config() -> SemanticsConfig {
    SemanticsConfig {
        dedup_window: Millis::seconds(4),
        max_out_of_orderness: Millis::seconds(2),
        idle_timeout: Millis::seconds(30),
        session_gap: Millis::seconds(5),
        trending_window: Millis::seconds(10),
        slide: Millis::seconds(1),
        trending_recent: Millis::seconds(3),
        top_n: 3,
        cooc_recent: 3,
        cooc_window: Millis::seconds(20),
        cooc_slide: Millis::seconds(2),
        cooc_min_support: 2,
        related_interval: Millis::seconds(3),
    }
}

/// Raw records of one partition from lines, positioned by line number.
pub fn records(partition: &str, lines: &[Vec<u8>]) -> Vec<RawRecord> {
    lines
        .iter()
        .enumerate()
        .map(|(index, bytes)| RawRecord {
            position: SourcePosition {
                partition: partition.to_string(),
                position: (index + 1).to_string(),
            },
            bytes: bytes.clone(),
            corrupt: None,
        })
        .collect()
}

/// The one-file partition on worker 0 and nothing on the other `workers - 1` workers.
pub fn one_partition(lines: &[Vec<u8>], workers: usize) -> SourcesByWorker {
    let mut by_worker: SourcesByWorker = (0..workers).map(|_| Vec::new()).collect();
    by_worker[0].push(Box::new(VecSource::from_lines(
        "file:test",
        lines.iter().cloned(),
    )));
    by_worker
}

/// One pageview as a JSON line.
pub fn pageview_line(
    event_id: &str,
    portal: &str,
    user: &str,
    article: &str,
    ts: u64,
    dwell_ms: u32,
    scroll_pct: u8,
) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{event_id}","portal":"{portal}","user_id":"{user}","article_id":"{article}","ts":{ts},"dwell_ms":{dwell_ms},"scroll_pct":{scroll_pct},"clicks":1}}"#
    )
    .into_bytes()
}

/// Real feature records: the oracle over `events` synthetic pageviews of the given seed.
pub fn synthetic_features(events: u64, seed: u64) -> Vec<pageflow_dataflow::features::Feature> {
    use pageflow_connectors::synthetic::{SyntheticConfig, write_json_lines};
    let mut bytes = Vec::new();
    let written = write_json_lines(
        &SyntheticConfig {
            seed,
            ..SyntheticConfig::default()
        },
        events,
        &mut bytes,
    );
    assert_eq!(
        written.ok(),
        Some(events),
        "the generator writes every event"
    );
    let lines: Vec<Vec<u8>> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    pageflow_dataflow::oracle::run(
        &records("file:synthetic", &lines),
        &SemanticsConfig::default(),
    )
    .features
}

/// `GET path` on the HTTP server at `addr` (`127.0.0.1:PORT`): the status and the body, or `None`
/// while nothing answers there.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let port = addr.rsplit_once(':')?.1.parse().ok()?;
    let response = aws::http_request(port, "GET", path, &[], b"").ok()?;
    Some((response.status, response.text()))
}
