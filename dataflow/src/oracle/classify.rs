//! Step 1: what happens to each record, in arrival order: valid? → late? → duplicate? → accepted.

use std::collections::HashMap;

use super::Summary;
use crate::config::SemanticsConfig;
use crate::event::{DeadLetter, Event, RawRecord, Reason, validate};

/// Classifies the records of one partition in arrival order.
///
/// Returns the accepted events (valid, on-time, not duplicates) in arrival order, the dead letters
/// (invalid and late records) in input order, and the counts.
///
/// - An invalid record (per [`validate`]) becomes a dead letter with its reason and detail.
/// - The partition's watermark is `max(ts of the valid records so far) − max_out_of_orderness`, and
///   there is none before the first valid record \[N6\]. A valid record is judged against the watermark
///   *before* its own `ts` is counted into it; it is late when `ts < watermark`. Every valid record,
///   late and duplicate ones included, then counts into the maximum.
/// - A valid, on-time record is a duplicate when an earlier *accepted* event has the same `event_id`
///   and a `ts` less than `dedup_window` away; it is dropped and counted.
pub fn classify(
    records: &[RawRecord],
    config: &SemanticsConfig,
) -> (Vec<Event>, Vec<DeadLetter>, Summary) {
    let mut summary = Summary::default();
    let mut accepted: Vec<Event> = Vec::new();
    let mut dead_letters = Vec::new();
    // The largest `ts` of the valid records seen so far (duplicates and late ones included).
    let mut max_ts: Option<u64> = None;
    // The `ts` of every accepted event, by `event_id`.
    let mut accepted_ts: HashMap<String, Vec<u64>> = HashMap::new();

    for record in records {
        summary.records += 1;
        let view = match validate(&record.bytes) {
            Ok(view) => view,
            Err(invalid) => {
                *summary
                    .invalid
                    .entry(invalid.reason.code().to_string())
                    .or_default() += 1;
                dead_letters.push(DeadLetter::new(
                    invalid.reason,
                    invalid.detail,
                    record.position.clone(),
                    &record.bytes,
                ));
                continue;
            }
        };
        summary.valid += 1;
        let event = Event::from(&view);

        // The watermark before this record; `None` while it is −∞ (no valid record yet, or the
        // largest `ts` is smaller than `max_out_of_orderness`: then nothing can be below it).
        let watermark = max_ts.and_then(|max| max.checked_sub(config.max_out_of_orderness.ms()));
        max_ts = Some(max_ts.map_or(event.ts, |max| max.max(event.ts)));

        if let Some(watermark) = watermark
            && event.ts < watermark
        {
            summary.late += 1;
            let mut dead = DeadLetter::new(
                Reason::Late,
                late_detail(event.ts, watermark),
                record.position.clone(),
                &record.bytes,
            );
            dead.portal = Some(event.portal.to_string());
            dead.ts = Some(event.ts);
            dead_letters.push(dead);
            continue;
        }

        let earlier = accepted_ts.entry(event.event_id.to_string()).or_default();
        if earlier
            .iter()
            .any(|&ts| ts.abs_diff(event.ts) < config.dedup_window.ms())
        {
            summary.duplicates += 1;
            continue;
        }
        earlier.push(event.ts);
        summary.accepted += 1;
        accepted.push(event);
    }
    (accepted, dead_letters, summary)
}

/// The `detail` of a `late` dead letter: names the record's `ts` and the watermark it was below.
pub fn late_detail(ts: u64, watermark: u64) -> String {
    format!(
        "ts {ts} is below the watermark {watermark} (the largest ts seen in this partition minus \
         max_out_of_orderness): the event arrived too late to be counted; send events sooner or \
         raise max_out_of_orderness"
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::config::Millis;

    fn ids(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| &*e.event_id).collect()
    }

    #[test]
    fn invalid_records_are_dead_letters_counted_by_reason() {
        let records = vec![
            raw(1, b"{"),
            raw(2, b"[1]"),
            raw(3, &[0xff, 0xfe]),
            raw(4, &json("e1", "g1", "u1", "a", 1_000)),
            raw(5, b"{\"x\":1"),
        ];
        let (accepted, dead, summary) = classify(&records, &SemanticsConfig::default());
        assert_eq!(ids(&accepted), vec!["e1"]);
        assert_eq!(summary.records, 5);
        assert_eq!(summary.valid, 1);
        assert_eq!(summary.accepted, 1);
        assert_eq!(summary.invalid.get("invalid_json"), Some(&2));
        assert_eq!(summary.invalid.get("not_object"), Some(&1));
        assert_eq!(summary.invalid.get("invalid_utf8"), Some(&1));
        let positions: Vec<_> = dead.iter().map(|d| d.position.position.as_str()).collect();
        assert_eq!(positions, vec!["1", "2", "3", "5"]);
        assert_eq!(dead[0].raw.as_deref(), Some("{"));
        assert_eq!(dead[2].raw, None);
        assert!(dead[2].raw_base64.is_some());
        assert!(dead.iter().all(|d| d.portal.is_none() && d.ts.is_none()));
    }

    #[test]
    fn late_is_judged_against_the_watermark_before_the_record_counts() {
        let config = SemanticsConfig {
            max_out_of_orderness: Millis::seconds(5),
            ..SemanticsConfig::default()
        };
        let records = vec![
            // No watermark yet: an early first record is never late.
            raw(1, &json("e1", "g1", "u1", "a", 100_000)),
            // Watermark 95_000: exactly at it is on time.
            raw(2, &json("e2", "g1", "u1", "a", 95_000)),
            // Just below it is late.
            raw(3, &json("e3", "g2", "u1", "a", 94_999)),
            // A duplicate still moves the watermark: e1 again at 200_000 → watermark 195_000.
            raw(4, &json("e1", "g1", "u1", "a", 100_500)),
            raw(5, &json("e1", "g1", "u1", "a", 200_000)),
            raw(6, &json("e4", "g1", "u1", "a", 194_999)),
            raw(7, &json("e5", "g1", "u1", "a", 195_000)),
        ];
        let (accepted, dead, summary) = classify(&records, &config);
        assert_eq!(ids(&accepted), vec!["e1", "e2", "e5"]);
        assert_eq!(summary.late, 2);
        assert_eq!(summary.duplicates, 2);
        assert_eq!(summary.valid, 7);
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].reason, Reason::Late);
        assert_eq!(dead[0].position.position, "3");
        assert_eq!(dead[0].portal.as_deref(), Some("g2"));
        assert_eq!(dead[0].ts, Some(94_999));
        assert!(dead[0].detail.contains("94999") && dead[0].detail.contains("95000"));
        assert_eq!(dead[1].position.position, "6");
        assert_eq!(dead[1].ts, Some(194_999));
    }

    #[test]
    fn watermark_below_zero_makes_nothing_late() {
        let config = SemanticsConfig::default();
        let records = vec![
            raw(1, &json("e1", "g1", "u1", "a", 4_000)),
            raw(2, &json("e2", "g1", "u1", "a", 0)),
        ];
        let (accepted, _, summary) = classify(&records, &config);
        assert_eq!(accepted.len(), 2);
        assert_eq!(summary.late, 0);
    }

    #[test]
    fn duplicates_within_the_dedup_window_only() {
        let config = SemanticsConfig {
            dedup_window: Millis::minutes(10),
            max_out_of_orderness: Millis::hours(1),
            ..SemanticsConfig::default()
        };
        let m = 60_000;
        let records = vec![
            raw(1, &json("x", "g1", "u1", "a", 20 * m)),
            // Within 10 min, before or after: duplicates.
            raw(2, &json("x", "g1", "u1", "a", 20 * m + 9 * m)),
            raw(3, &json("x", "g1", "u1", "b", 20 * m - 9 * m)),
            // Exactly 10 min apart is not "less than": accepted.
            raw(4, &json("x", "g1", "u1", "a", 30 * m)),
            // 5 min from the second accepted one (35 min from the first): duplicate.
            raw(5, &json("x", "g1", "u1", "a", 35 * m)),
            // 10 min from 30: accepted, although 40 - 35 < 10 (35 was dropped, not accepted).
            raw(6, &json("x", "g1", "u1", "a", 40 * m)),
            // Another id is never a duplicate of x.
            raw(7, &json("y", "g1", "u1", "a", 20 * m)),
        ];
        let (accepted, dead, summary) = classify(&records, &config);
        let ts: Vec<_> = accepted.iter().map(|e| (&*e.event_id, e.ts / m)).collect();
        assert_eq!(ts, vec![("x", 20), ("x", 30), ("x", 40), ("y", 20)]);
        assert_eq!(summary.duplicates, 3);
        assert_eq!(summary.accepted, 4);
        assert!(dead.is_empty());
    }

    #[test]
    fn late_is_checked_before_duplicate() {
        let config = SemanticsConfig::default();
        let records = vec![
            raw(1, &json("x", "g1", "u1", "a", 1_000)),
            raw(2, &json("y", "g1", "u1", "a", 100_000)),
            // Same id as an accepted event and within the dedup window, but late first.
            raw(3, &json("x", "g1", "u1", "a", 1_000)),
        ];
        let (_, dead, summary) = classify(&records, &config);
        assert_eq!(summary.late, 1);
        assert_eq!(summary.duplicates, 0);
        assert_eq!(dead[0].reason, Reason::Late);
    }
}
