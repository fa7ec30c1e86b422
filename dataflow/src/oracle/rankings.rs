//! Step 4: `popular` and `trending` of each final window, counted from scratch (N12–N14).

use std::collections::{BTreeMap, BTreeSet};

use super::{in_window, window_ends, window_slice};
use crate::config::SemanticsConfig;
use crate::event::Event;
use crate::features::{Feature, RankedItem, RankingKind};
use crate::ids::hash_str;
use crate::score::trending_score;

/// The `popular` and `trending` records of every final window of a replay whose last final window
/// is `last_window_end` (see [`super::window_ends`]), in window order.
pub fn rankings(
    accepted: &[Event],
    config: &SemanticsConfig,
    last_window_end: u64,
) -> Vec<Feature> {
    // Sorted by `ts` once, so that each window's events are a slice (the same as [`rankings_at`]).
    let mut by_ts: Vec<(u64, &Event)> = accepted.iter().map(|e| (e.ts, e)).collect();
    by_ts.sort_by_key(|(ts, _)| *ts);
    window_ends(accepted, config, last_window_end)
        .into_iter()
        .flat_map(|end| {
            let events = window_slice(&by_ts, end, config.trending_window.ms());
            rank_window(events.iter().map(|(_, e)| *e), config, end)
        })
        .collect()
}

/// What one window knows about one article.
#[derive(Default)]
struct ArticleCounts<'a> {
    /// Views in the whole window `[T − W, T)`.
    views: u64,
    /// Engaged views in the whole window.
    engaged_views: u64,
    /// Views in the older part `[T − W, T − R)`.
    older_views: u64,
    /// Hashes of the users with a view in the recent part `[T − R, T)`.
    recent_users: BTreeSet<u64>,
    /// Hashes of the users with an engaged view in the recent part.
    recent_engaged_users: BTreeSet<u64>,
    /// The article id (for the items).
    article_id: &'a str,
}

/// The `popular` and `trending` records of the window ending at `window_end`: for each portal with
/// at least one view in `[window_end − trending_window, window_end)`, a `popular` then a `trending`
/// record, portals in ascending order. Counted from scratch over all of `accepted`.
pub fn rankings_at(accepted: &[Event], config: &SemanticsConfig, window_end: u64) -> Vec<Feature> {
    let window = config.trending_window.ms();
    let events = accepted
        .iter()
        .filter(|e| in_window(e.ts, window_end, window));
    rank_window(events, config, window_end)
}

/// [`rankings_at`] given exactly the events of the window.
fn rank_window<'a>(
    events: impl Iterator<Item = &'a Event>,
    config: &SemanticsConfig,
    window_end: u64,
) -> Vec<Feature> {
    let window = config.trending_window.ms();
    let recent = config.trending_recent.ms();
    let window_start = window_end.saturating_sub(window);
    let recent_start = window_end.saturating_sub(recent);

    // portal → article → counts, over the events of the window only.
    let mut portals: BTreeMap<&str, BTreeMap<&str, ArticleCounts<'_>>> = BTreeMap::new();
    for event in events {
        let counts = portals
            .entry(&event.portal)
            .or_default()
            .entry(&event.article_id)
            .or_default();
        counts.article_id = &event.article_id;
        counts.views += 1;
        if event.engaged() {
            counts.engaged_views += 1;
        }
        if event.ts >= recent_start {
            counts.recent_users.insert(hash_str(&event.user_id));
            if event.engaged() {
                counts.recent_engaged_users.insert(hash_str(&event.user_id));
            }
        } else {
            counts.older_views += 1;
        }
    }

    let mut features = Vec::new();
    for (portal, articles) in portals {
        // popular [N13]: every article with a view, by views descending, then article_id ascending.
        let mut popular: Vec<RankedItem> = articles
            .values()
            .map(|c| RankedItem {
                article_id: c.article_id.to_string(),
                views: c.views,
                engaged_views: c.engaged_views,
                score: c.views as f64,
            })
            .collect();
        popular.sort_by(|x, y| {
            y.views
                .cmp(&x.views)
                .then_with(|| x.article_id.cmp(&y.article_id))
        });
        popular.truncate(config.top_n);

        // trending [N14]: articles with a positive score, by score descending, then article_id.
        let mut trending: Vec<RankedItem> = articles
            .values()
            .map(|c| RankedItem {
                article_id: c.article_id.to_string(),
                views: c.views,
                engaged_views: c.engaged_views,
                score: trending_score(
                    c.recent_users.len() as u64,
                    c.recent_engaged_users.len() as u64,
                    c.older_views,
                    recent,
                    window,
                ),
            })
            .filter(|item| item.score > 0.0)
            .collect();
        trending.sort_by(|x, y| {
            y.score
                .total_cmp(&x.score)
                .then_with(|| x.article_id.cmp(&y.article_id))
        });
        trending.truncate(config.top_n);

        features.push(Feature::ranking(
            RankingKind::Popular,
            portal,
            window_start,
            window_end,
            popular,
        ));
        features.push(Feature::ranking(
            RankingKind::Trending,
            portal,
            window_start,
            window_end,
            trending,
        ));
    }
    features
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::config::Millis;
    use crate::features::RankingFeature;

    const M: u64 = 60_000;

    fn ranking<'a>(features: &'a [Feature], kind: &str, portal: &str) -> &'a RankingFeature {
        features
            .iter()
            .find_map(|f| match f {
                Feature::Popular(r) | Feature::Trending(r)
                    if f.kind() == kind && r.portal == portal =>
                {
                    Some(r)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {kind} for {portal} in {features:?}"))
    }

    fn articles(ranking: &RankingFeature) -> Vec<&str> {
        ranking
            .items
            .iter()
            .map(|i| i.article_id.as_str())
            .collect()
    }

    #[test]
    fn popular_counts_the_window_and_breaks_ties_by_article_id() {
        let config = SemanticsConfig {
            top_n: 2,
            ..SemanticsConfig::default()
        };
        let mut engaged = event("e1", "u1", "b", 10 * M);
        engaged.dwell_ms = 10_000;
        let mut scrolled = event("e2", "u2", "b", 20 * M);
        scrolled.scroll_pct = 50;
        let accepted = vec![
            engaged,
            scrolled,
            event("e3", "u3", "c", 30 * M),
            event("e4", "u4", "a", 40 * M),
            event("e5", "u5", "c", 50 * M),
            event("e6", "u6", "d", 60 * M), // outside [0, 60 min)
        ];
        let features = rankings_at(&accepted, &config, 60 * M);
        assert_eq!(features.len(), 2);
        let popular = ranking(&features, "popular", "g1");
        assert_eq!((popular.window_start, popular.window_end), (0, 60 * M));
        assert_eq!(articles(popular), vec!["b", "c"]);
        assert_eq!(popular.items[0].views, 2);
        assert_eq!(popular.items[0].engaged_views, 2);
        assert_eq!(popular.items[0].score, 2.0);
        assert_eq!(popular.items[1].engaged_views, 0);
        // One minute later the window is [1 min, 61 min): d is in.
        let features = rankings_at(&accepted, &config, 61 * M);
        assert_eq!(ranking(&features, "popular", "g1").window_start, M);
        assert_eq!(
            articles(ranking(&features, "popular", "g1")),
            vec!["b", "c"]
        );
        // A window with no views has no record.
        assert!(rankings_at(&accepted, &config, 200 * M).is_empty());
    }

    #[test]
    fn a_planted_spike_trends_first_and_a_reloading_user_does_not() {
        let config = SemanticsConfig {
            trending_window: Millis::minutes(60),
            trending_recent: Millis::minutes(10),
            ..SemanticsConfig::default()
        };
        let mut accepted = Vec::new();
        let mut id = 0;
        let mut push = |accepted: &mut Vec<Event>, user: &str, article: &str, ts: u64| {
            id += 1;
            accepted.push(event(&format!("e{id:05}"), user, article, ts));
        };
        // steady: 4 views per minute all hour long, each by a different user.
        for minute in 0..60 {
            for k in 0..4 {
                push(
                    &mut accepted,
                    &format!("s{minute}-{k}"),
                    "steady",
                    minute * M + k * 1_000,
                );
            }
        }
        // spike: nothing, then 30 distinct readers in the last 10 minutes.
        for k in 0..30 {
            push(
                &mut accepted,
                &format!("p{k}"),
                "spike",
                50 * M + k * 10_000,
            );
        }
        // reload: one user reloading 100 times in the last 10 minutes.
        for k in 0..100 {
            push(&mut accepted, "bot", "reload", 50 * M + k * 5_000);
        }
        let features = rankings_at(&accepted, &config, 60 * M);
        let trending = ranking(&features, "trending", "g1");
        assert_eq!(trending.items[0].article_id, "spike");
        assert_eq!(
            trending.items[0].score,
            trending_score(30, 0, 0, 10 * M, 60 * M)
        );
        assert_eq!(trending.items[0].score, 30.0);
        let reload = trending.items.iter().position(|i| i.article_id == "reload");
        let steady = trending.items.iter().position(|i| i.article_id == "steady");
        // reload scores 1 (one user), steady ~0 (recent 40 users vs baseline 200·10/50 = 40).
        assert_eq!(reload, Some(1));
        assert_eq!(trending.items[1].score, 1.0);
        assert_eq!(trending.items[1].views, 100);
        assert_eq!(steady, None);
        // Popular, by contrast, is fooled by the reloads.
        assert_eq!(
            articles(ranking(&features, "popular", "g1")),
            vec!["steady", "reload", "spike"]
        );
    }

    #[test]
    fn engaged_recent_readers_count_twice_and_portals_are_separate() {
        let config = SemanticsConfig::default();
        let mut engaged = event("e1", "u1", "a", 55 * M);
        engaged.scroll_pct = 80;
        let mut other_portal = event("e3", "u3", "a", 55 * M);
        other_portal.portal = "g2".into();
        let accepted = vec![
            engaged,
            event("e2", "u2", "b", 55 * M),
            // Old views of b lower its score: baseline = 5·10/50 = 1, (1 − 1)/sqrt(2) = 0 → left out.
            event("o1", "v1", "b", M),
            event("o2", "v2", "b", 2 * M),
            event("o3", "v3", "b", 3 * M),
            event("o4", "v4", "b", 4 * M),
            event("o5", "v5", "b", 5 * M),
            other_portal,
        ];
        let features = rankings_at(&accepted, &config, 60 * M);
        let portals: Vec<_> = features.iter().map(|f| (f.kind(), f.portal())).collect();
        assert_eq!(
            portals,
            vec![
                ("popular", "g1"),
                ("trending", "g1"),
                ("popular", "g2"),
                ("trending", "g2")
            ]
        );
        let trending = ranking(&features, "trending", "g1");
        assert_eq!(articles(trending), vec!["a"]);
        assert_eq!(trending.items[0].score, 2.0);
        assert_eq!(trending.items[0].engaged_views, 1);
        assert_eq!(articles(ranking(&features, "trending", "g2")), vec!["a"]);
    }

    #[test]
    fn early_windows_start_at_zero() {
        let config = SemanticsConfig::default();
        let accepted = vec![event("e1", "u1", "a", 30_000)];
        let features = rankings(&accepted, &config, M);
        assert_eq!(features.len(), 2);
        assert_eq!(ranking(&features, "trending", "g1").window_start, 0);
        assert_eq!(ranking(&features, "trending", "g1").window_end, M);
    }
}
