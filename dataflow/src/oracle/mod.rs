//! The batch oracle: `SEMANTICS.md` computed from scratch over one finite, replayed partition.
//!
//! This module is the **reference** that tests compare the incremental job with. It is written to be
//! obviously correct, not fast: every step is a direct transcription of a sentence of the contract
//! (`../shared/SEMANTICS.md`) or of a numbered decision of `docs/semantics-notes.md` (cited as
//! `[N6]` etc.), computed in batch, from scratch, with no incremental state shared between windows.
//! It shares no code with the job's operators; it only uses the crate's common vocabulary: the
//! validator ([`crate::event::validate`]), the feature records and their ids ([`crate::features`]),
//! the scores and the exact order of related partners ([`crate::score`], so floats are
//! bit-identical and ties fall the same way) and the user hash
//! ([`crate::ids::hash_str`], N14).
//!
//! The pipeline, one public function per step so operator tests can compare against each:
//!
//! 1. [`classify`]: records in arrival order → valid? → late? → duplicate? → accepted
//!    events, dead letters and a [`Summary`] of the counts.
//! 2. [`sessions`]: the accepted events of each `(portal, user_id)` split by `session_gap`; all
//!    sessions close at the end of the replay. [`session_events`] gives the events of each session.
//! 3. [`last_window_end`]: the last final window `L` of the replay (N9), and [`window_ends`] every
//!    final window `T` (multiples of `slide`, after the first accepted event, up to `L`); likewise
//!    [`last_cooc_window_end`] and [`cooc_window_ends`] for the co-occurrence windows (multiples of
//!    `cooc_slide`, up to `L_c`).
//! 4. [`rankings`] / [`rankings_at`]: `popular` and `trending` for each final window (N12–N14), each
//!    window counted from scratch over every accepted event.
//! 5. [`pairs`]: the co-occurrence pairs formed in each session (N15).
//! 6. [`related`] / [`related_lists_at`]: the related lists of each final co-occurrence window (N16)
//!    and their throttled emission with the end-of-replay flush at `L_c` (N17).
//!
//! [`run`] chains them and sorts the features into the canonical replay order (N20).
//!
//! Windows are `[T − length, T)` computed with saturating subtraction, so that the early windows of
//! an input near the epoch start at 0 (`window_start` is saturated the same way).

mod classify;
mod rankings;
mod related;
mod sessions;

use std::collections::BTreeMap;

use crate::config::SemanticsConfig;
use crate::event::{DeadLetter, Event, RawRecord};
use crate::features::{Feature, sort_features};

pub use classify::{classify, late_detail};
pub use rankings::{rankings, rankings_at};
pub use related::{related, related_lists_at};
pub use sessions::{pairs, session_events, sessions};

/// Everything the oracle computes for one replayed partition.
#[derive(Debug, Clone, PartialEq)]
pub struct OracleOutput {
    /// Every feature record, sorted with [`sort_features`] (N20).
    pub features: Vec<Feature>,
    /// Every dead letter (invalid and late records), in input order.
    pub dead_letters: Vec<DeadLetter>,
    /// What happened to the records.
    pub summary: Summary,
}

/// What happened to the records of a replay: every record is counted once in `records`, then either
/// in `invalid` (by reason code) or in `valid`; a valid one is then `late`, a duplicate or `accepted`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Summary {
    /// Records read.
    pub records: u64,
    /// Records that passed validation.
    pub valid: u64,
    /// Invalid records by reason code (`too_large`, `invalid_json`, …); reasons that did not occur
    /// have no entry.
    pub invalid: BTreeMap<String, u64>,
    /// Valid records whose `ts` was below the watermark (dead-lettered with reason `late`).
    pub late: u64,
    /// Valid, on-time records dropped as duplicates of an accepted event.
    pub duplicates: u64,
    /// Events counted: valid, on-time and not duplicates.
    pub accepted: u64,
}

/// The whole computation over one replayed partition (`records` in arrival order), ending as if the
/// watermark jumped to +∞ after the last record.
pub fn run(records: &[RawRecord], config: &SemanticsConfig) -> OracleOutput {
    let (accepted, dead_letters, summary) = classify(records, config);
    let mut features: Vec<Feature> = sessions(&accepted, config)
        .into_iter()
        .map(Feature::Session)
        .collect();
    // Rankings end at `L`, related lists at `L_c`: each kind of window has its own last one (N9).
    if let Some(last) = last_window_end(&accepted, config) {
        features.extend(rankings(&accepted, config, last));
    }
    if let Some(last_cooc) = last_cooc_window_end(&accepted, config) {
        features.extend(related(&accepted, config, last_cooc));
    }
    sort_features(&mut features);
    OracleOutput {
        features,
        dead_letters,
        summary,
    }
}

/// The last final window of a replay (N9): `L = floor(last_ts / slide)·slide + slide`, where
/// `last_ts` is the largest `ts` of the accepted events; `None` when nothing was accepted.
pub fn last_window_end(accepted: &[Event], config: &SemanticsConfig) -> Option<u64> {
    let last_ts = accepted.iter().map(|event| event.ts).max()?;
    Some(config.tick(last_ts) + config.slide.ms())
}

/// Every final window end `T` of a replay, in increasing order: the multiples of `slide` with
/// `first_ts < T ≤ last_window_end`, where `first_ts` is the smallest accepted `ts`. (Windows ending
/// at or before the first event are empty and produce nothing.)
pub fn window_ends(accepted: &[Event], config: &SemanticsConfig, last_window_end: u64) -> Vec<u64> {
    let Some(first_ts) = accepted.iter().map(|event| event.ts).min() else {
        return Vec::new();
    };
    let slide = config.slide.ms();
    let mut ends = Vec::new();
    let mut end = config.tick(first_ts) + slide;
    while end <= last_window_end {
        ends.push(end);
        end += slide;
    }
    ends
}

/// The last final co-occurrence window of a replay (N9):
/// `L_c = floor(last_ts / cooc_slide)·cooc_slide + cooc_slide`, where `last_ts` is the largest `ts`
/// of the accepted events; `None` when nothing was accepted. (`L ≤ L_c < L + cooc_slide`: the first
/// co-occurrence window to contain the last event ends no earlier than the first slide window to.)
pub fn last_cooc_window_end(accepted: &[Event], config: &SemanticsConfig) -> Option<u64> {
    let last_ts = accepted.iter().map(|event| event.ts).max()?;
    Some(config.cooc_tick(last_ts) + config.cooc_slide.ms())
}

/// Every final co-occurrence window end `T` of a replay, in increasing order: the multiples of
/// `cooc_slide` with `first_ts < T ≤ last_cooc_window_end`, where `first_ts` is the smallest
/// accepted `ts`. (Windows ending at or before the first event are empty and produce nothing.)
pub fn cooc_window_ends(
    accepted: &[Event],
    config: &SemanticsConfig,
    last_cooc_window_end: u64,
) -> Vec<u64> {
    let Some(first_ts) = accepted.iter().map(|event| event.ts).min() else {
        return Vec::new();
    };
    let cooc_slide = config.cooc_slide.ms();
    let mut ends = Vec::new();
    let mut end = config.cooc_tick(first_ts) + cooc_slide;
    while end <= last_cooc_window_end {
        ends.push(end);
        end += cooc_slide;
    }
    ends
}

/// Whether `ts` is in the window `[end − length, end)` (saturating at 0).
fn in_window(ts: u64, end: u64, length: u64) -> bool {
    end.saturating_sub(length) <= ts && ts < end
}

/// The entries of `sorted` (sorted by `ts`, their first element) with `ts` in the window
/// `[end − length, end)`: the same entries as filtering with [`in_window`], found by bisection.
fn window_slice<T>(sorted: &[(u64, T)], end: u64, length: u64) -> &[(u64, T)] {
    let from = sorted.partition_point(|(ts, _)| *ts < end.saturating_sub(length));
    let to = sorted.partition_point(|(ts, _)| *ts < end);
    &sorted[from..to]
}

#[cfg(test)]
pub(crate) mod test_util;

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use crate::config::Millis;

    #[test]
    fn last_window_end_and_window_ends() {
        let config = SemanticsConfig::default();
        assert_eq!(last_window_end(&[], &config), None);
        assert!(window_ends(&[], &config, 120_000).is_empty());
        let events = vec![
            event("e1", "u", "a", 61_000),
            event("e2", "u", "a", 179_999),
        ];
        // last_ts 179_999 is in the window [120_000, 180_000): L = 180_000.
        assert_eq!(last_window_end(&events, &config), Some(180_000));
        assert_eq!(
            window_ends(&events, &config, 180_000),
            vec![120_000, 180_000]
        );
        // A last ts on a boundary opens the next window.
        let events = vec![event("e1", "u", "a", 60_000)];
        assert_eq!(last_window_end(&events, &config), Some(120_000));
        assert_eq!(window_ends(&events, &config, 120_000), vec![120_000]);
    }

    #[test]
    fn last_cooc_window_end_and_cooc_window_ends() {
        const M: u64 = 60_000;
        let config = SemanticsConfig::default();
        assert_eq!(config.cooc_slide, Millis::minutes(10));
        assert_eq!(last_cooc_window_end(&[], &config), None);
        assert!(cooc_window_ends(&[], &config, 20 * M).is_empty());
        // last_ts just below a cooc_slide boundary: it is in the window ending at that boundary.
        let events = vec![
            event("e1", "u", "a", 61_000),
            event("e2", "u", "a", 20 * M - 1),
        ];
        assert_eq!(last_cooc_window_end(&events, &config), Some(20 * M));
        assert_eq!(last_window_end(&events, &config), Some(20 * M));
        assert_eq!(
            cooc_window_ends(&events, &config, 20 * M),
            vec![10 * M, 20 * M]
        );
        // last_ts on the boundary opens the next co-occurrence window: L_c = 30 min, while the
        // slide windows end one minute later, at L = 21 min.
        let events = vec![event("e1", "u", "a", 61_000), event("e2", "u", "a", 20 * M)];
        assert_eq!(last_cooc_window_end(&events, &config), Some(30 * M));
        assert_eq!(last_window_end(&events, &config), Some(21 * M));
        assert_eq!(
            cooc_window_ends(&events, &config, 30 * M),
            vec![10 * M, 20 * M, 30 * M]
        );
        // A first event on a boundary is not in the window ending there.
        let events = vec![event("e1", "u", "a", 10 * M)];
        assert_eq!(last_cooc_window_end(&events, &config), Some(20 * M));
        assert_eq!(cooc_window_ends(&events, &config, 20 * M), vec![20 * M]);
    }

    #[test]
    fn run_counts_every_record_and_sorts_features() {
        let config = SemanticsConfig {
            slide: Millis::minutes(1),
            ..SemanticsConfig::default()
        };
        let records = vec![
            raw(1, &json("e1", "g1", "u1", "a", 1_000)),
            raw(2, b"not json"),
            raw(3, &json("e2", "g1", "u1", "b", 2_000)),
            raw(4, &json("e1", "g1", "u1", "a", 3_000)),
            raw(5, &json("e3", "g1", "u2", "a", 100_000)),
            raw(6, &json("e4", "g1", "u2", "b", 3_000)),
        ];
        let output = run(&records, &config);
        assert_eq!(output.summary.records, 6);
        assert_eq!(output.summary.valid, 5);
        assert_eq!(output.summary.invalid.get("invalid_json"), Some(&1));
        assert_eq!(output.summary.duplicates, 1);
        assert_eq!(output.summary.late, 1);
        assert_eq!(output.summary.accepted, 3);
        assert_eq!(output.dead_letters.len(), 2);
        let keys: Vec<_> = output.features.iter().map(|f| f.sort_key()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        // Two sessions; popular and trending at 60_000 and 120_000 (L: last ts 100_000).
        let kinds: Vec<_> = output
            .features
            .iter()
            .map(|f| (f.kind(), f.final_ts()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("session", 2_000),
                ("popular", 60_000),
                ("trending", 60_000),
                ("session", 100_000),
                ("popular", 120_000),
                ("trending", 120_000),
            ]
        );
    }

    #[test]
    fn sliced_rankings_equal_rankings_counted_over_every_event() {
        let config = SemanticsConfig::default();
        let (accepted, _, _) = classify(&generated(3_000, 3 * 3_600_000, 11), &config);
        let last = last_window_end(&accepted, &config).unwrap_or_default();
        let direct: Vec<Feature> = window_ends(&accepted, &config, last)
            .into_iter()
            .flat_map(|end| rankings_at(&accepted, &config, end))
            .collect();
        // Windows ending at 1, 2, …, 180 min (the last ts is just below 3 h), two portals, two kinds.
        assert_eq!(direct.len(), 180 * 2 * 2);
        assert_eq!(rankings(&accepted, &config, last), direct);
    }

    /// N16 with string maps, straight from the text, to check the numbered representation.
    fn naive_related_lists(
        accepted: &[Event],
        config: &SemanticsConfig,
        end: u64,
    ) -> BTreeMap<(String, String), Vec<crate::features::RelatedItem>> {
        let length = config.cooc_window.ms();
        let mut views: BTreeMap<(String, String), u64> = BTreeMap::new();
        for e in accepted.iter().filter(|e| in_window(e.ts, end, length)) {
            *views
                .entry((e.portal.to_string(), e.article_id.to_string()))
                .or_default() += 1;
        }
        let mut cooc: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for (portal, a, b, ts) in pairs(accepted, config) {
            if in_window(ts, end, length) {
                *cooc.entry((portal, a, b)).or_default() += 1;
            }
        }
        let mut lists: BTreeMap<(String, String), Vec<crate::features::RelatedItem>> =
            BTreeMap::new();
        for ((portal, x), views_x) in &views {
            let mut items = Vec::new();
            for ((p, a, b), count) in &cooc {
                let partner = if a == x {
                    b
                } else if b == x {
                    a
                } else {
                    continue;
                };
                let views_partner = views
                    .get(&(p.clone(), partner.clone()))
                    .copied()
                    .unwrap_or(0);
                if p == portal && *count >= config.cooc_min_support && views_partner > 0 {
                    let item = crate::features::RelatedItem {
                        article_id: partner.clone(),
                        cooc: *count,
                        score: crate::score::related_score(*count, *views_x, views_partner),
                    };
                    items.push((item, views_partner));
                }
            }
            // Score descending decided exactly (N16a), then article_id.
            items.sort_by(|(i, views_i), (j, views_j)| {
                crate::score::related_order(i.cooc, *views_i, j.cooc, *views_j)
                    .then(i.article_id.cmp(&j.article_id))
            });
            let mut items: Vec<_> = items.into_iter().map(|(item, _)| item).collect();
            items.truncate(config.top_n);
            if !items.is_empty() {
                lists.insert((portal.clone(), x.clone()), items);
            }
        }
        lists
    }

    #[test]
    fn related_lists_equal_a_naive_count() {
        let config = SemanticsConfig {
            cooc_window: Millis::hours(1),
            top_n: 5,
            ..SemanticsConfig::default()
        };
        let (accepted, _, _) = classify(&generated(3_000, 3 * 3_600_000, 5), &config);
        let mut non_empty = 0;
        for end in [30, 60, 61, 90, 120, 150, 181].map(|m| m * 60_000) {
            let lists = related_lists_at(&accepted, &config, end);
            non_empty += lists.len();
            assert_eq!(
                lists,
                naive_related_lists(&accepted, &config, end),
                "window ending {end}"
            );
        }
        assert!(non_empty > 100, "{non_empty}");
    }

    #[test]
    fn the_same_input_gives_the_same_output() {
        let records = generated(2_000, 2 * 3_600_000, 3);
        let config = SemanticsConfig::default();
        let first = run(&records, &config);
        assert_eq!(run(&records, &config), first);
        let ids: std::collections::BTreeSet<_> =
            first.features.iter().map(|f| f.feature_id()).collect();
        assert_eq!(ids.len(), first.features.len(), "feature ids are unique");
        let session_views: u64 = first
            .features
            .iter()
            .filter_map(|f| match f {
                Feature::Session(s) => Some(s.views),
                _ => None,
            })
            .sum();
        assert_eq!(session_views, first.summary.accepted);
    }

    #[test]
    fn a_day_of_twenty_thousand_events_is_computed_whole() {
        // Test-sized files span a day: every record is counted and related lists appear.
        let records = generated(20_000, 24 * 3_600_000, 7);
        let config = SemanticsConfig::default();
        let output = run(&records, &config);
        assert_eq!(output.summary.records, 20_000);
        assert!(output.features.iter().any(|f| f.kind() == "related"));
        // Related lists only at final co-occurrence windows, up to L_c; rankings every slide.
        let (accepted, _, _) = classify(&records, &config);
        let last_cooc = last_cooc_window_end(&accepted, &config).unwrap_or_default();
        let related_ends: std::collections::BTreeSet<u64> = output
            .features
            .iter()
            .filter(|f| f.kind() == "related")
            .map(|f| f.final_ts())
            .collect();
        assert!(related_ends.len() > 10, "{related_ends:?}");
        assert!(
            related_ends
                .iter()
                .all(|end| end.is_multiple_of(config.cooc_slide.ms()) && *end <= last_cooc),
            "{related_ends:?}"
        );
        assert!(
            output
                .features
                .iter()
                .filter(|f| f.kind() == "popular")
                .any(|f| !f.final_ts().is_multiple_of(config.cooc_slide.ms()))
        );
    }
}
