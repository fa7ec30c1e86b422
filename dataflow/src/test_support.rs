//! Builders shared by the crate's tests: a configuration of short windows, records from lines.

use crate::config::{Millis, SemanticsConfig};
use crate::event::{RawRecord, SourcePosition};
use crate::source::{SourcesByWorker, VecSource};

/// Windows, gaps and intervals of a few seconds, so that random inputs of a few dozen events
/// exercise every boundary (co-occurrence windows step by two ticks, `related_interval` is not a
/// multiple of that step).
pub(crate) fn small_config() -> SemanticsConfig {
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
pub(crate) fn records(partition: &str, lines: &[Vec<u8>]) -> Vec<RawRecord> {
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
pub(crate) fn one_partition(lines: &[Vec<u8>], workers: usize) -> SourcesByWorker {
    let mut by_worker: SourcesByWorker = (0..workers).map(|_| Vec::new()).collect();
    by_worker[0].push(Box::new(VecSource::from_lines(
        "file:test",
        lines.iter().cloned(),
    )));
    by_worker
}

/// One pageview as a JSON line.
pub(crate) fn pageview_line(
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
