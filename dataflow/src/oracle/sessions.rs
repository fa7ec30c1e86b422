//! Steps 2 and 5: sessions per `(portal, user_id)`, and the co-occurrence pairs formed in them.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::SemanticsConfig;
use crate::event::Event;
use crate::features::{SESSION_ARTICLES_MAX, SessionFeature};

/// The sessions of the accepted events, each as its events in `(ts, event_id)` order.
///
/// The events of one `(portal, user_id)`, ordered by `(ts, event_id)`, split where the gap to the
/// previous event is larger than `session_gap` (a gap of exactly `session_gap` stays in the session,
/// N10). At the end of a replay every session is closed. Sessions are listed by
/// `(portal, user_id, start_ts)`.
pub fn session_events<'a>(accepted: &'a [Event], config: &SemanticsConfig) -> Vec<Vec<&'a Event>> {
    let mut by_user: BTreeMap<(&str, &str), Vec<&Event>> = BTreeMap::new();
    for event in accepted {
        by_user
            .entry((&event.portal, &event.user_id))
            .or_default()
            .push(event);
    }
    let mut sessions = Vec::new();
    for (_, mut events) in by_user {
        events.sort_by(|x, y| (x.ts, &x.event_id).cmp(&(y.ts, &y.event_id)));
        let mut current: Vec<&Event> = Vec::new();
        for event in events {
            if let Some(previous) = current.last()
                && event.ts - previous.ts > config.session_gap.ms()
            {
                sessions.push(std::mem::take(&mut current));
            }
            current.push(event);
        }
        if !current.is_empty() {
            sessions.push(current);
        }
    }
    sessions
}

/// The session features of the replay (N10, N11), listed by `(portal, user_id, start_ts)`.
pub fn sessions(accepted: &[Event], config: &SemanticsConfig) -> Vec<SessionFeature> {
    session_events(accepted, config)
        .iter()
        .map(|events| session_feature(events))
        .collect()
}

/// The feature of one session, from its events in `(ts, event_id)` order.
fn session_feature(events: &[&Event]) -> SessionFeature {
    let first = events[0];
    let last = events[events.len() - 1];
    let mut distinct: Vec<&str> = Vec::new();
    for event in events {
        if !distinct.contains(&&*event.article_id) {
            distinct.push(&event.article_id);
        }
    }
    SessionFeature {
        feature_id: SessionFeature::feature_id(&first.portal, &first.user_id, first.ts),
        portal: first.portal.to_string(),
        user_id: first.user_id.to_string(),
        session_id: SessionFeature::session_id(&first.portal, &first.user_id, first.ts),
        start_ts: first.ts,
        end_ts: last.ts,
        views: events.len() as u64,
        distinct_articles: distinct.len() as u64,
        dwell_ms_total: events.iter().map(|e| u64::from(e.dwell_ms)).sum(),
        clicks_total: events.iter().map(|e| u64::from(e.clicks)).sum(),
        max_scroll_pct: events.iter().map(|e| e.scroll_pct).max().unwrap_or(0),
        articles: distinct
            .iter()
            .take(SESSION_ARTICLES_MAX)
            .map(|a| a.to_string())
            .collect(),
    }
}

/// The co-occurrence pairs of the replay (N15): `(portal, a, b, ts)` with `a < b`, one per pair
/// formed, sorted.
///
/// Within a session, in `(ts, event_id)` order, an event whose article is read for the first time
/// in the session pairs with the previous up to `cooc_recent` distinct articles of the session,
/// counted backwards from that event: the most recently read first, where a re-read makes an article
/// the most recent again. The pair has the `ts` of that event. Each unordered pair counts once per
/// session.
pub fn pairs(accepted: &[Event], config: &SemanticsConfig) -> Vec<(String, String, String, u64)> {
    let mut pairs = Vec::new();
    for session in session_events(accepted, config) {
        // The distinct articles read so far in the session, the most recently read first.
        let mut recency: Vec<&str> = Vec::new();
        let mut counted: BTreeSet<(&str, &str)> = BTreeSet::new();
        for event in session {
            let article = &*event.article_id;
            let first_read = !recency.contains(&article);
            if first_read {
                for &previous in recency.iter().take(config.cooc_recent) {
                    let pair = if article < previous {
                        (article, previous)
                    } else {
                        (previous, article)
                    };
                    if counted.insert(pair) {
                        pairs.push((
                            event.portal.to_string(),
                            pair.0.to_string(),
                            pair.1.to_string(),
                            event.ts,
                        ));
                    }
                }
            }
            recency.retain(|&a| a != article);
            recency.insert(0, article);
        }
    }
    pairs.sort();
    pairs
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::config::Millis;

    const M: u64 = 60_000;

    #[test]
    fn sessions_split_only_on_a_gap_larger_than_session_gap() {
        let config = SemanticsConfig {
            session_gap: Millis::minutes(30),
            ..SemanticsConfig::default()
        };
        let mut e1 = event("e1", "u1", "a", 0);
        e1.dwell_ms = 1_000;
        e1.clicks = 2;
        e1.scroll_pct = 40;
        let mut e2 = event("e2", "u1", "b", 30 * M); // gap exactly 30 min: same session
        e2.dwell_ms = 500;
        e2.scroll_pct = 90;
        let e3 = event("e3", "u1", "a", 60 * M); // gap 30 min again: same session
        let e4 = event("e4", "u1", "c", 90 * M + 1); // gap 30 min + 1 ms: new session
        let e5 = event("e5", "u2", "a", 10 * M); // another user
        let mut e6 = event("e6", "u1", "c", 10 * M);
        e6.portal = "g2".into(); // same user on another portal
        // Arrival order does not matter.
        let accepted = vec![e4, e3, e5, e1, e6, e2];
        let features = sessions(&accepted, &config);
        let summary: Vec<_> = features
            .iter()
            .map(|s| {
                (
                    s.portal.as_str(),
                    s.user_id.as_str(),
                    s.start_ts,
                    s.end_ts,
                    s.views,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("g1", "u1", 0, 60 * M, 3),
                ("g1", "u1", 90 * M + 1, 90 * M + 1, 1),
                ("g1", "u2", 10 * M, 10 * M, 1),
                ("g2", "u1", 10 * M, 10 * M, 1),
            ]
        );
        let first = &features[0];
        assert_eq!(first.distinct_articles, 2);
        assert_eq!(first.articles, vec!["a", "b"]);
        assert_eq!(first.dwell_ms_total, 1_500);
        assert_eq!(first.clicks_total, 2);
        assert_eq!(first.max_scroll_pct, 90);
        assert_eq!(first.session_id, SessionFeature::session_id("g1", "u1", 0));
        assert_eq!(first.feature_id, SessionFeature::feature_id("g1", "u1", 0));
    }

    #[test]
    fn a_late_event_can_merge_two_sessions() {
        let config = SemanticsConfig::default();
        let apart = vec![event("e1", "u1", "a", 0), event("e3", "u1", "a", 40 * M)];
        assert_eq!(sessions(&apart, &config).len(), 2);
        let mut merged = apart.clone();
        merged.push(event("e2", "u1", "b", 20 * M));
        let features = sessions(&merged, &config);
        assert_eq!(features.len(), 1);
        assert_eq!(features[0].articles, vec!["a", "b"]);
    }

    #[test]
    fn equal_ts_are_ordered_by_event_id() {
        let config = SemanticsConfig::default();
        let accepted = vec![event("e2", "u1", "b", 5), event("e1", "u1", "a", 5)];
        assert_eq!(sessions(&accepted, &config)[0].articles, vec!["a", "b"]);
    }

    #[test]
    fn session_articles_are_capped_but_distinct_articles_is_not() {
        let config = SemanticsConfig::default();
        let accepted: Vec<_> = (0..60u64)
            .map(|i| event(&format!("e{i:02}"), "u1", &format!("a{i:02}"), i * 1_000))
            .collect();
        let features = sessions(&accepted, &config);
        assert_eq!(features[0].distinct_articles, 60);
        assert_eq!(features[0].articles.len(), SESSION_ARTICLES_MAX);
        assert_eq!(features[0].articles[49], "a49");
    }

    #[test]
    fn pairs_use_the_most_recent_distinct_articles() {
        let config = SemanticsConfig {
            cooc_recent: 2,
            ..SemanticsConfig::default()
        };
        // Reads A B C A D: D is new and pairs with the two most recent distinct articles, A (re-read,
        // so most recent) and C; B has fallen out. A's re-read forms no pair.
        let accepted = vec![
            event("e1", "u1", "A", 1_000),
            event("e2", "u1", "B", 2_000),
            event("e3", "u1", "C", 3_000),
            event("e4", "u1", "A", 4_000),
            event("e5", "u1", "D", 5_000),
        ];
        let expected = |list: &[(&str, &str, u64)]| -> Vec<(String, String, String, u64)> {
            list.iter()
                .map(|&(a, b, ts)| ("g1".to_string(), a.to_string(), b.to_string(), ts))
                .collect()
        };
        assert_eq!(
            pairs(&accepted, &config),
            expected(&[
                ("A", "B", 2_000),
                ("A", "C", 3_000),
                ("A", "D", 5_000),
                ("B", "C", 3_000),
                ("C", "D", 5_000),
            ])
        );
    }

    #[test]
    fn pairs_stay_within_a_session() {
        let config = SemanticsConfig::default();
        let accepted = vec![
            event("e1", "u1", "A", 0),
            event("e2", "u1", "B", 31 * M), // new session: no pair with A
            event("e3", "u1", "A", 32 * M), // first read of A in this session: pairs with B
            event("e4", "u2", "C", 32 * M), // another user: no pair
        ];
        assert_eq!(
            pairs(&accepted, &config),
            vec![("g1".to_string(), "A".to_string(), "B".to_string(), 32 * M)]
        );
    }
}
