//! The rankings operator's own rules, on [`RankingsState`] alone (the oracle tests check it with
//! window statistics against a naive recomputation): popular order and ties, the top-N cut, what
//! trending keeps and how it differs from popular, when a window is emitted, what a sliding window
//! retracts, and provisional previews against final rankings.
//!
//! The windows are short (`window` 600 ms, `recent` 100 ms, `slide` 100 ms), so the trending
//! baseline is `older_views / 5`.

use crate::features::{Feature, RankedItem, RankingKind};
use crate::intern::Article;
use crate::live::LiveUpdate;
use crate::score::trending_score;

use super::rankings::{RankingSpec, RankingsState};
use super::window_stats::ArticleWindowStats;

const SPEC: RankingSpec = RankingSpec {
    window: 600,
    recent: 100,
    slide: 100,
    top_n: 3,
};

/// One article's statistics in the window ending at `window_end`; `recent_users` readers in the
/// recent part, none engaged, and `older_views` before it.
fn stats(
    portal: &str,
    article: &str,
    window_end: u64,
    views: u64,
    older_views: u64,
    recent_users: u64,
) -> ArticleWindowStats {
    ArticleWindowStats {
        article: Article::intern_names(portal, article),
        window_end,
        views,
        engaged_views: views / 2,
        older_views,
        recent_users,
        recent_engaged_users: 0,
        provisional: false,
    }
}

fn provisional(stats: ArticleWindowStats) -> ArticleWindowStats {
    ArticleWindowStats {
        provisional: true,
        ..stats
    }
}

fn state_with(changes: impl IntoIterator<Item = ArticleWindowStats>) -> RankingsState {
    let mut state = RankingsState::new(SPEC);
    for change in changes {
        state.insert(change);
    }
    state
}

/// The ranking of `kind` for `portal` at `window_end` among `features`, as `(article, score)`.
fn ranking(
    features: &[Feature],
    kind: RankingKind,
    portal: &str,
    window_end: u64,
) -> Vec<(String, f64)> {
    let found: Vec<&Vec<RankedItem>> = features
        .iter()
        .filter_map(|feature| match (kind, feature) {
            (RankingKind::Popular, Feature::Popular(f))
            | (RankingKind::Trending, Feature::Trending(f))
                if f.portal == portal && f.window_end == window_end =>
            {
                Some(&f.items)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind:?} ranking of {portal} at {window_end} in {features:#?}"
    );
    found[0]
        .iter()
        .map(|item| (item.article_id.clone(), item.score))
        .collect()
}

fn ids(ranking: &[(String, f64)]) -> Vec<&str> {
    ranking.iter().map(|(id, _)| id.as_str()).collect()
}

/// `(kind, window_end, is_final, article ids)` of each live ranking update.
fn live_rankings(updates: &[LiveUpdate]) -> Vec<(RankingKind, u64, bool, Vec<String>)> {
    updates
        .iter()
        .filter_map(|update| match update {
            LiveUpdate::Ranking {
                kind,
                window_end,
                is_final,
                items,
                ..
            } => Some((
                *kind,
                *window_end,
                *is_final,
                items.iter().map(|item| item.article_id.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn popular_is_by_views_then_article_id_cut_at_top_n() {
    let mut state = state_with([
        stats("rk-order", "a", 1000, 5, 0, 0),
        stats("rk-order", "b", 1000, 9, 0, 0),
        stats("rk-order", "c", 1000, 5, 0, 0),
        stats("rk-order", "d", 1000, 1, 0, 0),
        stats("rk-order", "e", 1000, 7, 0, 0),
    ]);
    let mut out = Vec::new();
    state.advance(1000, &mut out);
    let popular = ranking(&out, RankingKind::Popular, "rk-order", 1000);
    // a and c tie on 5 views: a first; c and d fall below the top 3.
    assert_eq!(
        popular,
        [("b".into(), 9.0), ("e".into(), 7.0), ("a".into(), 5.0)]
    );
    let Some(Feature::Popular(feature)) = out.first() else {
        panic!("popular first: {out:#?}");
    };
    assert_eq!((feature.window_start, feature.window_end), (400, 1000));
    assert_eq!(
        (feature.items[0].views, feature.items[0].engaged_views),
        (9, 4),
        "the items carry the window's counts"
    );
}

#[test]
fn trending_ranks_rising_articles_and_leaves_out_the_rest() {
    let mut state = state_with([
        // Big and steady: 90 older views (baseline 18) against 10 recent readers: negative.
        stats("rk-trend", "steady", 1000, 100, 90, 10),
        // A spike from nothing.
        stats("rk-trend", "spike", 1000, 12, 0, 12),
        // Rising a little: baseline 2, 8 recent readers.
        stats("rk-trend", "mild", 1000, 20, 10, 8),
        // Exactly at its baseline: a score of zero is not trending.
        stats("rk-trend", "flat", 1000, 6, 5, 1),
    ]);
    let mut out = Vec::new();
    state.advance(1000, &mut out);
    assert_eq!(
        ids(&ranking(&out, RankingKind::Popular, "rk-trend", 1000)),
        ["steady", "mild", "spike"]
    );
    let trending = ranking(&out, RankingKind::Trending, "rk-trend", 1000);
    assert_eq!(
        trending,
        [
            ("spike".into(), trending_score(12, 0, 0, 100, 600)),
            ("mild".into(), trending_score(8, 0, 10, 100, 600)),
        ]
    );
}

#[test]
fn a_window_is_emitted_once_its_end_is_reached_and_only_once() {
    let mut state = state_with([stats("rk-once", "a", 1000, 3, 0, 3)]);
    let mut out = Vec::new();
    state.advance(999, &mut out);
    assert!(out.is_empty(), "not final before its end: {out:#?}");
    state.advance(1000, &mut out);
    assert_eq!(out.len(), 2, "popular and trending: {out:#?}");
    assert!(matches!(out[0], Feature::Popular(_)) && matches!(out[1], Feature::Trending(_)));
    state.advance(1000, &mut out);
    assert_eq!(out.len(), 2, "the same limit again emits nothing");
}

#[test]
fn a_ranked_portal_gets_a_record_every_slide_until_its_last_view_slides_out() {
    let mut state = state_with([
        stats("rk-slide", "a", 1000, 3, 0, 3),
        // The window ending at 1400 no longer holds the article's views: a retraction.
        stats("rk-slide", "a", 1400, 0, 0, 0),
    ]);
    let mut out = Vec::new();
    state.advance(1300, &mut out);
    let ends: Vec<u64> = out.iter().map(Feature::final_ts).collect();
    assert_eq!(
        ends,
        [1000, 1000, 1100, 1100, 1200, 1200, 1300, 1300],
        "unchanged windows are emitted too"
    );
    assert_eq!(
        ids(&ranking(&out, RankingKind::Popular, "rk-slide", 1300)),
        ["a"]
    );
    assert!(!state.is_idle());
    out.clear();
    state.advance(5000, &mut out);
    assert!(
        out.is_empty(),
        "an empty portal has no record, and nothing follows: {out:#?}"
    );
    assert!(state.is_idle());
}

#[test]
fn sliding_windows_retract_and_reorder_at_their_own_end() {
    // Both windows' changes arrive before either is final; each applies at its own end.
    let mut state = state_with([
        stats("rk-retract", "a", 1000, 10, 0, 0),
        stats("rk-retract", "b", 1000, 8, 0, 0),
        stats("rk-retract", "c", 1000, 6, 0, 0),
        stats("rk-retract", "d", 1000, 4, 0, 0),
        stats("rk-retract", "a", 1100, 0, 0, 0),
        stats("rk-retract", "c", 1100, 9, 0, 0),
    ]);
    let mut out = Vec::new();
    state.advance(1100, &mut out);
    assert_eq!(
        ids(&ranking(&out, RankingKind::Popular, "rk-retract", 1000)),
        ["a", "b", "c"]
    );
    // a slid out, c rose, d moves into the top 3.
    assert_eq!(
        ranking(&out, RankingKind::Popular, "rk-retract", 1100),
        [("c".into(), 9.0), ("b".into(), 8.0), ("d".into(), 4.0)]
    );
}

#[test]
fn portals_are_ranked_apart() {
    let mut state = state_with([
        stats("rk-portal-x", "a", 1000, 1, 0, 0),
        stats("rk-portal-y", "a", 1000, 7, 0, 0),
        stats("rk-portal-y", "b", 1000, 2, 0, 0),
    ]);
    let mut out = Vec::new();
    state.advance(1000, &mut out);
    assert_eq!(
        ranking(&out, RankingKind::Popular, "rk-portal-x", 1000),
        [("a".into(), 1.0)]
    );
    assert_eq!(
        ranking(&out, RankingKind::Popular, "rk-portal-y", 1000),
        [("a".into(), 7.0), ("b".into(), 2.0)]
    );
}

#[test]
fn final_rankings_go_to_the_live_view_as_final_at_their_window_end() {
    let mut state = state_with([
        stats("rk-live", "a", 1000, 2, 0, 2),
        stats("rk-live", "b", 1000, 4, 0, 1),
    ]);
    let (mut features, mut live) = (Vec::new(), Vec::new());
    state.advance_with_live(1000, &mut features, &mut live);
    assert_eq!(
        live_rankings(&live),
        [
            (
                RankingKind::Popular,
                1000,
                true,
                vec!["b".into(), "a".into()]
            ),
            (
                RankingKind::Trending,
                1000,
                true,
                vec!["a".into(), "b".into()]
            ),
        ]
    );
    let LiveUpdate::Ranking {
        watermark,
        window_start,
        items,
        ..
    } = &live[0]
    else {
        panic!("a ranking: {live:#?}");
    };
    assert_eq!((*window_start, *watermark), (400, 1000));
    let Feature::Popular(feature) = &features[0] else {
        panic!("popular first: {features:#?}");
    };
    assert_eq!(
        items, &feature.items,
        "the live view shows the feature's items"
    );
}

#[test]
fn previews_overlay_the_window_still_filling_and_do_not_change_the_final_ranking() {
    let mut state = state_with([
        stats("rk-preview", "a", 1000, 5, 0, 0),
        stats("rk-preview", "b", 1000, 3, 0, 0),
    ]);
    let mut out = Vec::new();
    state.advance(1000, &mut out);
    state.insert(provisional(stats("rk-preview", "b", 1100, 9, 0, 0)));
    let mut previews = Vec::new();
    state.previews(1050, &mut previews);
    assert_eq!(
        live_rankings(&previews),
        [
            (
                RankingKind::Popular,
                1100,
                false,
                vec!["b".into(), "a".into()]
            ),
            (RankingKind::Trending, 1100, false, vec![]),
        ]
    );
    let LiveUpdate::Ranking {
        watermark,
        window_start,
        ..
    } = &previews[0]
    else {
        panic!("a ranking: {previews:#?}");
    };
    assert_eq!((*window_start, *watermark), (500, 1050));
    // Nothing changed since: no new preview.
    previews.clear();
    state.previews(1060, &mut previews);
    assert!(previews.is_empty(), "{previews:#?}");
    // The final window 1100 had no final change: the provisional numbers are not in it.
    out.clear();
    state.advance(1100, &mut out);
    assert_eq!(
        ranking(&out, RankingKind::Popular, "rk-preview", 1100),
        [("a".into(), 5.0), ("b".into(), 3.0)]
    );
}

#[test]
fn provisional_statistics_of_a_final_window_or_an_older_one_are_ignored() {
    let mut state = state_with([stats("rk-stale", "a", 1000, 5, 0, 0)]);
    let mut out = Vec::new();
    state.advance(1000, &mut out);
    let mut previews = Vec::new();
    state.insert(provisional(stats("rk-stale", "z", 1000, 50, 0, 0)));
    state.previews(1000, &mut previews);
    assert!(previews.is_empty(), "window 1000 is final: {previews:#?}");

    // A newer window still filling replaces the older one's preview; the older one's late
    // provisional statistics are dropped.
    state.insert(provisional(stats("rk-stale", "b", 1100, 6, 0, 0)));
    state.insert(provisional(stats("rk-stale", "c", 1200, 7, 0, 0)));
    state.insert(provisional(stats("rk-stale", "d", 1100, 8, 0, 0)));
    state.previews(1150, &mut previews);
    assert_eq!(
        live_rankings(&previews),
        [
            (
                RankingKind::Popular,
                1200,
                false,
                vec!["c".into(), "a".into()]
            ),
            (RankingKind::Trending, 1200, false, vec![]),
        ]
    );
}
