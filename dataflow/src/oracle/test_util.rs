//! Small builders for the oracle's unit tests.

use crate::event::{Event, RawRecord, SourcePosition};

/// An accepted event on portal `g1` with no dwell, scroll or clicks.
pub fn event(event_id: &str, user_id: &str, article_id: &str, ts: u64) -> Event {
    Event {
        event_id: event_id.into(),
        portal: "g1".into(),
        user_id: user_id.into(),
        article_id: article_id.into(),
        ts,
        dwell_ms: 0,
        scroll_pct: 0,
        clicks: 0,
    }
}

/// The JSON of a pageview with only the required fields.
pub fn json(event_id: &str, portal: &str, user_id: &str, article_id: &str, ts: u64) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{event_id}","portal":"{portal}","user_id":"{user_id}","article_id":"{article_id}","ts":{ts}}}"#
    )
    .into_bytes()
}

/// A record at 1-based line `line` of `file:test.jsonl`.
pub fn raw(line: usize, bytes: &[u8]) -> RawRecord {
    RawRecord {
        position: SourcePosition {
            partition: "file:test.jsonl".to_string(),
            position: line.to_string(),
        },
        bytes: bytes.to_vec(),
        corrupt: None,
    }
}

/// `count` generated records over `span_ms` of event time: two portals, a few hundred users reading
/// sessions of popular and long-tail articles, with some disorder, retries and broken records.
pub fn generated(count: usize, span_ms: u64, seed: u64) -> Vec<RawRecord> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |bound: u64| {
        // xorshift64*: deterministic and good enough for test data.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    };
    let mut records = Vec::with_capacity(count);
    let mut previous: Option<String> = None;
    for line in 0..count {
        let roll = next(1000);
        let bytes = if roll < 5 {
            b"{\"event_id\":".to_vec()
        } else if roll < 30
            && let Some(previous) = &previous
        {
            // A retried beacon.
            previous.clone().into_bytes()
        } else {
            let base = span_ms * line as u64 / count as u64;
            // Mostly in order, some a few seconds back, a few minutes back (late).
            let back = match next(100) {
                0..=79 => 0,
                80..=97 => next(4_000),
                _ => next(180_000),
            };
            let ts = base.saturating_sub(back);
            let portal = if next(4) == 0 { "g2" } else { "g1" };
            let user = next(400);
            let article = if next(3) == 0 { next(300) } else { next(20) };
            let text = format!(
                r#"{{"event_id":"ev{line}","portal":"{portal}","user_id":"u{user}","article_id":"a{article}","ts":{ts},"dwell_ms":{},"scroll_pct":{},"clicks":{}}}"#,
                next(30_000),
                next(101),
                next(3)
            );
            previous = Some(text.clone());
            text.into_bytes()
        };
        records.push(raw(line + 1, &bytes));
    }
    records
}
