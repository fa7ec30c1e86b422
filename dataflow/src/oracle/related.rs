//! Step 6: the related lists of each final co-occurrence window (N16) and their emission (N17).

use std::collections::{BTreeMap, BTreeSet};

use super::{cooc_window_ends, pairs, window_slice};
use crate::config::SemanticsConfig;
use crate::event::Event;
use crate::features::{Feature, RelatedItem};
use crate::score::{related_order, related_score};

/// `(portal, article_id)`.
type ArticleKey = (String, String);

/// The related lists of the window `[window_end − cooc_window, window_end)` (N16), for every
/// `(portal, article)` whose list is not empty.
///
/// `cooc(a, b)` is the number of pairs `{a, b}` (see [`pairs`]) with their `ts` in the window and
/// `views_cw(x)` the number of accepted events of `x` in it (the same window). The partners of `a`
/// are the `b` with `cooc(a, b) ≥ cooc_min_support` and `views_cw(b) > 0` (none when
/// `views_cw(a) = 0`), scored `cooc / sqrt(views_cw(a) · views_cw(b))`, by score descending, decided
/// exactly ([`related_order`], N16a), then `article_id` ascending, the first `top_n`.
///
/// Defined for any `window_end`; [`related`] evaluates it at the final co-occurrence windows
/// (multiples of `cooc_slide`) only.
pub fn related_lists_at(
    accepted: &[Event],
    config: &SemanticsConfig,
    window_end: u64,
) -> BTreeMap<ArticleKey, Vec<RelatedItem>> {
    let all_pairs = pairs(accepted, config);
    let numbered = Numbered::new(accepted, &all_pairs);
    numbered
        .lists(config, window_end)
        .into_iter()
        .map(|(article, partners)| {
            let (portal, article_id) = numbered.articles[article];
            (
                (portal.to_string(), article_id.to_string()),
                numbered.items(&partners),
            )
        })
        .collect()
}

/// The views and pairs of a replay, with articles and pairs numbered and both lists sorted by `ts`:
/// the views and pairs of a window are then two slices, counted from scratch into plain arrays.
/// (Only a representation: [`Numbered::lists`] is the definition of N16 on it.)
struct Numbered<'a> {
    /// Article number → `(portal, article_id)`.
    articles: Vec<(&'a str, &'a str)>,
    /// Pair number → the numbers of its articles `(a, b)`, `a < b` by `article_id`, same portal.
    pair_articles: Vec<(usize, usize)>,
    /// `(ts, article number)` of every accepted event, sorted.
    views: Vec<(u64, usize)>,
    /// `(ts, pair number)` of every pair formed, sorted.
    pairs: Vec<(u64, usize)>,
}

impl<'a> Numbered<'a> {
    fn new(accepted: &'a [Event], all_pairs: &'a [(String, String, String, u64)]) -> Self {
        let keys: BTreeSet<(&str, &str)> = accepted
            .iter()
            .map(|e| (&*e.portal, &*e.article_id))
            .chain(all_pairs.iter().flat_map(|(portal, a, b, _)| {
                [(portal.as_str(), a.as_str()), (portal.as_str(), b.as_str())]
            }))
            .collect();
        let articles: Vec<(&str, &str)> = keys.into_iter().collect();
        let number: BTreeMap<(&str, &str), usize> = articles
            .iter()
            .enumerate()
            .map(|(n, &key)| (key, n))
            .collect();
        let mut views: Vec<(u64, usize)> = accepted
            .iter()
            .map(|e| (e.ts, number[&(&*e.portal, &*e.article_id)]))
            .collect();
        views.sort_unstable();
        let mut pair_number: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        let mut pair_articles = Vec::new();
        let mut pairs: Vec<(u64, usize)> = Vec::new();
        for (portal, a, b, ts) in all_pairs {
            let key = (
                number[&(portal.as_str(), a.as_str())],
                number[&(portal.as_str(), b.as_str())],
            );
            let n = *pair_number.entry(key).or_insert_with(|| {
                pair_articles.push(key);
                pair_articles.len() - 1
            });
            pairs.push((*ts, n));
        }
        pairs.sort_unstable();
        Numbered {
            articles,
            pair_articles,
            views,
            pairs,
        }
    }

    /// N16 at the window ending at `window_end`: article number → its non-empty related list.
    fn lists(&self, config: &SemanticsConfig, window_end: u64) -> BTreeMap<usize, Vec<Partner>> {
        let length = config.cooc_window.ms();
        // views_cw of every article.
        let mut views = vec![0u64; self.articles.len()];
        for &(_, article) in window_slice(&self.views, window_end, length) {
            views[article] += 1;
        }
        // cooc of every pair in the window (and which pairs occur, in order of first occurrence).
        let mut cooc = vec![0u64; self.pair_articles.len()];
        let mut occurring = Vec::new();
        for &(_, pair) in window_slice(&self.pairs, window_end, length) {
            if cooc[pair] == 0 {
                occurring.push(pair);
            }
            cooc[pair] += 1;
        }

        let mut lists: BTreeMap<usize, Vec<Partner>> = BTreeMap::new();
        for pair in occurring {
            let count = cooc[pair];
            let (a, b) = self.pair_articles[pair];
            let (views_a, views_b) = (views[a], views[b]);
            if count < config.cooc_min_support || views_a == 0 || views_b == 0 {
                continue;
            }
            lists.entry(a).or_default().push(Partner {
                article: b,
                cooc: count,
                score: related_score(count, views_a, views_b),
            });
            lists.entry(b).or_default().push(Partner {
                article: a,
                cooc: count,
                score: related_score(count, views_b, views_a),
            });
        }
        for partners in lists.values_mut() {
            // Score descending as exact numbers (N16a), never by the rounded `f64`s; then article_id.
            partners.sort_by(|x, y| {
                related_order(x.cooc, views[x.article], y.cooc, views[y.article])
                    .then_with(|| self.articles[x.article].1.cmp(self.articles[y.article].1))
            });
            partners.truncate(config.top_n);
        }
        lists
    }

    /// The items of a related list.
    fn items(&self, partners: &[Partner]) -> Vec<RelatedItem> {
        partners
            .iter()
            .map(|p| RelatedItem {
                article_id: self.articles[p.article].1.to_string(),
                cooc: p.cooc,
                score: p.score,
            })
            .collect()
    }
}

/// A [`RelatedItem`] with the partner's number instead of its id (same portal, so the number stands
/// for exactly one `article_id`: two lists are equal exactly when their items are).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Partner {
    article: usize,
    cooc: u64,
    score: f64,
}

/// The `related` records of a replay whose last final co-occurrence window is
/// `last_cooc_window_end` (`L_c`, see [`super::last_cooc_window_end`]; N9, N17).
///
/// Final co-occurrence windows `T` (multiples of `cooc_slide`, see [`super::cooc_window_ends`]) are
/// processed in increasing order; `related` is evaluated at no other time. For article `a` at `T`:
/// emit `related(a)` when it differs from the last list emitted for `a` (initially the empty list)
/// and either nothing was emitted for `a` yet or `T − last_emitted_T ≥ related_interval`. Then, at
/// the end of the replay, every article whose list at `last_cooc_window_end` differs from its last
/// emitted one is emitted with `window_end = last_cooc_window_end`, whatever the interval. A list
/// that became empty is emitted with no items.
///
/// The articles looked at in a window are those with a non-empty list there and those whose last
/// emitted list is not empty: any other article has an empty list now and had an empty one before,
/// so it has nothing to emit. (An article with views but no pair in the window has an empty list.)
pub fn related(
    accepted: &[Event],
    config: &SemanticsConfig,
    last_cooc_window_end: u64,
) -> Vec<Feature> {
    let all_pairs = pairs(accepted, config);
    let numbered = Numbered::new(accepted, &all_pairs);
    let mut emitter = Emitter {
        config,
        numbered: &numbered,
        last: BTreeMap::new(),
        features: Vec::new(),
    };
    for window_end in cooc_window_ends(accepted, config, last_cooc_window_end) {
        emitter.window(window_end, numbered.lists(config, window_end), true);
    }
    // End of the replay: the last lists are emitted, whatever the interval.
    emitter.window(
        last_cooc_window_end,
        numbered.lists(config, last_cooc_window_end),
        false,
    );
    emitter.features
}

/// What has been emitted so far.
struct Emitter<'a> {
    config: &'a SemanticsConfig,
    numbered: &'a Numbered<'a>,
    /// Article number → `(window_end, list)` of its last emission.
    last: BTreeMap<usize, (u64, Vec<Partner>)>,
    /// The records emitted, in order.
    features: Vec<Feature>,
}

impl Emitter<'_> {
    /// Emits the lists of the window ending at `window_end` that differ from the last emitted ones,
    /// only for articles not emitted within `related_interval` when `throttled`.
    fn window(
        &mut self,
        window_end: u64,
        mut lists: BTreeMap<usize, Vec<Partner>>,
        throttled: bool,
    ) {
        let looked_at: BTreeSet<usize> = lists
            .keys()
            .copied()
            .chain(
                self.last
                    .iter()
                    .filter(|(_, (_, items))| !items.is_empty())
                    .map(|(key, _)| *key),
            )
            .collect();
        for key in looked_at {
            let current = lists.remove(&key).unwrap_or_default();
            let (last_emitted_at, last_items) = match self.last.get(&key) {
                Some((at, items)) => (Some(*at), items.as_slice()),
                None => (None, &[][..]),
            };
            let changed = current.as_slice() != last_items;
            let allowed = !throttled
                || last_emitted_at
                    .is_none_or(|at| window_end - at >= self.config.related_interval.ms());
            if changed && allowed {
                let (portal, article_id) = self.numbered.articles[key];
                self.features.push(Feature::related(
                    portal,
                    article_id,
                    window_end.saturating_sub(self.config.cooc_window.ms()),
                    window_end,
                    self.numbered.items(&current),
                ));
                self.last.insert(key, (window_end, current));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::config::Millis;

    const M: u64 = 60_000;

    /// `(article_id, window_end, [(partner, cooc, score)])` of a related record.
    type Emitted = (String, u64, Vec<(String, u64, f64)>);

    /// The related records, summarised.
    fn summary(features: &[Feature]) -> Vec<Emitted> {
        features
            .iter()
            .filter_map(|f| match f {
                Feature::Related(r) => Some((
                    r.article_id.clone(),
                    r.window_end,
                    r.items
                        .iter()
                        .map(|i| (i.article_id.clone(), i.cooc, i.score))
                        .collect(),
                )),
                _ => None,
            })
            .collect()
    }

    fn entry(article: &str, end: u64, items: &[(&str, u64, f64)]) -> Emitted {
        (
            article.to_string(),
            end,
            items
                .iter()
                .map(|&(a, c, s)| (a.to_string(), c, s))
                .collect(),
        )
    }

    #[test]
    fn lists_need_support_and_views_and_break_ties_by_article_id() {
        let config = SemanticsConfig {
            cooc_min_support: 2,
            ..SemanticsConfig::default()
        };
        // Two sessions read x, y, z: every pair co-occurs twice, every article has 2 views.
        // A third reads x, w: support 1, left out.
        let accepted = vec![
            event("e1", "u1", "x", 1_000),
            event("e2", "u1", "y", 2_000),
            event("e3", "u1", "z", 3_000),
            event("e4", "u2", "z", 1_000),
            event("e5", "u2", "y", 2_000),
            event("e6", "u2", "x", 3_000),
            event("e7", "u3", "x", 4_000),
            event("e8", "u3", "w", 5_000),
        ];
        let lists = related_lists_at(&accepted, &config, M);
        let key = |a: &str| ("g1".to_string(), a.to_string());
        assert_eq!(lists.len(), 3);
        // x has 3 views: score 2/sqrt(3·2) for y and z, tie broken by article_id.
        let x: Vec<_> = lists[&key("x")]
            .iter()
            .map(|i| (i.article_id.as_str(), i.cooc, i.score))
            .collect();
        let score = related_score(2, 3, 2);
        assert_eq!(x, vec![("y", 2, score), ("z", 2, score)]);
        // y: z (2/sqrt(4) = 1) before x (2/sqrt(6)).
        let y: Vec<_> = lists[&key("y")]
            .iter()
            .map(|i| i.article_id.as_str())
            .collect();
        assert_eq!(y, vec!["z", "x"]);
        assert_eq!(lists[&key("y")][0].score, 1.0);
        // Before any pair is formed there is nothing; top_n cuts the lists.
        assert!(related_lists_at(&accepted, &config, 2_000).is_empty());
        let top1 = SemanticsConfig { top_n: 1, ..config };
        assert_eq!(related_lists_at(&accepted, &top1, M)[&key("x")].len(), 1);
    }

    #[test]
    fn a_partner_without_views_in_the_window_is_left_out() {
        let config = SemanticsConfig {
            cooc_min_support: 1,
            cooc_window: Millis::minutes(10),
            ..SemanticsConfig::default()
        };
        // a at 0 and b at 20 min, same session: the pair has ts 20 min, a's view is outside
        // [11 min, 21 min).
        let accepted = vec![event("e1", "u1", "a", 0), event("e2", "u1", "b", 20 * M)];
        assert!(related_lists_at(&accepted, &config, 21 * M).is_empty());
        // Likewise at the final co-occurrence window [20 min, 30 min) (L_c = 30 min), the only one
        // holding the pair.
        let last_cooc = crate::oracle::last_cooc_window_end(&accepted, &config).unwrap_or_default();
        assert_eq!(last_cooc, 30 * M);
        assert!(related(&accepted, &config, last_cooc).is_empty());
    }

    #[test]
    fn emission_is_throttled_by_related_interval_and_flushed_at_the_end() {
        // Co-occurrence windows every minute (cooc_slide = slide), so that `related_interval` spans
        // ten of them and the throttle, not the window spacing, is what holds emissions back.
        let config = SemanticsConfig {
            cooc_min_support: 1,
            cooc_slide: Millis::minutes(1),
            related_interval: Millis::minutes(10),
            ..SemanticsConfig::default()
        };
        assert!(config.validate().is_empty());
        let accepted = vec![
            // The pair {a, b} at 1 s; 1 view each: score 1.
            event("e1", "u1", "a", 0),
            event("e2", "u1", "b", 1_000),
            // A second view of b at 3 min: both lists change (score 1/sqrt(2)), first seen at 4 min,
            // held back until 11 min (10 min after the first emission).
            event("e3", "u2", "b", 3 * M),
            // A second view of a at 15 min: score 1/2, seen at 16 min = L, only 5 min after the last
            // emission: held back by the interval, but the end of the replay flushes it.
            event("e4", "u3", "a", 15 * M),
        ];
        let last = crate::oracle::last_cooc_window_end(&accepted, &config).unwrap_or_default();
        assert_eq!(last, 16 * M);
        let features = related(&accepted, &config, last);
        let half_sqrt2 = related_score(1, 1, 2);
        assert_eq!(
            summary(&features),
            vec![
                entry("a", M, &[("b", 1, 1.0)]),
                entry("b", M, &[("a", 1, 1.0)]),
                entry("a", 11 * M, &[("b", 1, half_sqrt2)]),
                entry("b", 11 * M, &[("a", 1, half_sqrt2)]),
                entry("a", 16 * M, &[("b", 1, 0.5)]),
                entry("b", 16 * M, &[("a", 1, 0.5)]),
            ]
        );
        let Feature::Related(first) = &features[0] else {
            panic!("not related: {features:?}");
        };
        assert_eq!((&*first.portal, first.window_start), ("g1", 0));

        // With a short interval every change goes out when seen, and nothing is left to flush.
        let eager = SemanticsConfig {
            related_interval: Millis::minutes(1),
            ..config
        };
        let ends: Vec<_> = summary(&related(&accepted, &eager, last))
            .into_iter()
            .map(|(a, end, _)| (a, end / M))
            .collect();
        let expected: Vec<_> = [1, 4, 16]
            .iter()
            .flat_map(|&m| [("a".to_string(), m), ("b".to_string(), m)])
            .collect();
        assert_eq!(ends, expected);
    }

    #[test]
    fn a_list_that_becomes_empty_is_emitted_empty() {
        let config = SemanticsConfig {
            cooc_min_support: 1,
            cooc_window: Millis::minutes(10),
            related_interval: Millis::minutes(10),
            ..SemanticsConfig::default()
        };
        assert_eq!(config.cooc_slide, Millis::minutes(10));
        let accepted = vec![
            event("e1", "u1", "a", 0),
            event("e2", "u1", "b", 1_000),
            // Keeps the replay going to L_c = 40 min.
            event("e3", "u2", "c", 30 * M),
        ];
        let features = related(&accepted, &config, 40 * M);
        // Changed with `cooc_slide`: lists are evaluated at multiples of 10 min, no longer every
        // minute, so the list first appears at 10 min (was 1 min) and is emptied at 20 min (was 11).
        assert_eq!(
            summary(&features),
            vec![
                entry("a", 10 * M, &[("b", 1, 1.0)]),
                entry("b", 10 * M, &[("a", 1, 1.0)]),
                // The pair leaves [T − 10 min, T) at T = 20 min, exactly one interval later.
                entry("a", 20 * M, &[]),
                entry("b", 20 * M, &[]),
            ]
        );
        let Feature::Related(gone) = &features[2] else {
            panic!("not related: {features:?}");
        };
        assert_eq!(gone.window_start, 10 * M);
        assert!(features[2].to_json().contains(r#""items":[]"#));
    }

    #[test]
    fn a_list_emptied_within_the_interval_is_flushed_empty() {
        let config = SemanticsConfig {
            cooc_min_support: 1,
            cooc_window: Millis::minutes(5),
            cooc_slide: Millis::minutes(5),
            related_interval: Millis::minutes(10),
            ..SemanticsConfig::default()
        };
        assert!(config.validate().is_empty());
        let accepted = vec![
            event("e1", "u1", "a", 0),
            event("e2", "u1", "b", 1_000),
            event("e3", "u2", "c", 7 * M),
        ];
        // Changed with `cooc_slide` (5 min here; windows were per minute): the list is seen at
        // 5 min (was 1 min); it is empty at T = 10 min but held back until 15 min; the replay ends
        // at L_c = 10 min (was L = 8 min), where it is flushed.
        let last_cooc = crate::oracle::last_cooc_window_end(&accepted, &config).unwrap_or_default();
        assert_eq!(last_cooc, 10 * M);
        let features = related(&accepted, &config, last_cooc);
        assert_eq!(
            summary(&features),
            vec![
                entry("a", 5 * M, &[("b", 1, 1.0)]),
                entry("b", 5 * M, &[("a", 1, 1.0)]),
                entry("a", 10 * M, &[]),
                entry("b", 10 * M, &[]),
            ]
        );
    }

    #[test]
    fn related_is_evaluated_only_at_multiples_of_cooc_slide() {
        let config = SemanticsConfig {
            cooc_min_support: 1,
            ..SemanticsConfig::default()
        };
        assert_eq!(
            (config.cooc_slide, config.related_interval),
            (Millis::minutes(10), Millis::minutes(10))
        );
        let accepted = vec![
            // The pair {a, b} at 1 s, then a second view of b at 3 min: the list of score 1 that
            // stands from 1 min to 4 min is never at a co-occurrence window end.
            event("e1", "u1", "a", 0),
            event("e2", "u1", "b", 1_000),
            event("e3", "u2", "b", 3 * M),
            // A second view of a at 15 min: score 1/2 from the window ending at 20 min.
            event("e4", "u3", "a", 15 * M),
            // Keeps the replay going to L_c = 30 min (nothing changes there).
            event("e5", "u4", "c", 25 * M),
        ];
        let last_cooc = crate::oracle::last_cooc_window_end(&accepted, &config).unwrap_or_default();
        assert_eq!(last_cooc, 30 * M);
        let features = related(&accepted, &config, last_cooc);
        let half_sqrt2 = related_score(1, 1, 2);
        assert_eq!(
            summary(&features),
            vec![
                entry("a", 10 * M, &[("b", 1, half_sqrt2)]),
                entry("b", 10 * M, &[("a", 1, half_sqrt2)]),
                entry("a", 20 * M, &[("b", 1, 0.5)]),
                entry("b", 20 * M, &[("a", 1, 0.5)]),
            ]
        );
        for feature in &features {
            let Feature::Related(record) = feature else {
                panic!("not related: {feature:?}");
            };
            assert_eq!(record.window_end % (10 * M), 0);
            // The window of 24 h starts at the epoch here (saturated).
            assert_eq!(record.window_start, 0);
        }

        // Evaluated every minute instead (cooc_slide = slide), the score-1 list would go out at 1 min.
        let every_minute = SemanticsConfig {
            cooc_slide: Millis::minutes(1),
            ..config
        };
        let last_minute = crate::oracle::last_cooc_window_end(&accepted, &every_minute);
        let first = summary(&related(
            &accepted,
            &every_minute,
            last_minute.unwrap_or_default(),
        ))
        .remove(0);
        assert_eq!(first, entry("a", M, &[("b", 1, 1.0)]));
    }

    #[test]
    fn the_replay_ends_at_the_last_final_cooc_window() {
        // A long interval, so that the last change is held back and only the end of the replay
        // emits it: at L_c, which depends on where the last event falls against `cooc_slide`.
        let config = SemanticsConfig {
            cooc_min_support: 1,
            related_interval: Millis::minutes(30),
            ..SemanticsConfig::default()
        };
        let with_second_view_of_b_at = |ts: u64| {
            vec![
                event("e1", "u1", "a", 0),
                event("e2", "u1", "b", 1_000),
                event("e3", "u2", "b", ts),
            ]
        };
        let half_sqrt2 = related_score(1, 1, 2);

        // Just below a boundary: L_c = 20 min (as L), and the window [.., 20 min) holds the view.
        let accepted = with_second_view_of_b_at(20 * M - 1);
        let last_cooc = crate::oracle::last_cooc_window_end(&accepted, &config).unwrap_or_default();
        assert_eq!(last_cooc, 20 * M);
        assert_eq!(
            summary(&related(&accepted, &config, last_cooc)),
            vec![
                entry("a", 10 * M, &[("b", 1, 1.0)]),
                entry("b", 10 * M, &[("a", 1, 1.0)]),
                entry("a", 20 * M, &[("b", 1, half_sqrt2)]),
                entry("b", 20 * M, &[("a", 1, half_sqrt2)]),
            ]
        );

        // On the boundary: the window ending at 20 min does not hold it; L_c = 30 min (L would be
        // 21 min, not a co-occurrence window end) and the change is flushed there.
        let accepted = with_second_view_of_b_at(20 * M);
        let last_cooc = crate::oracle::last_cooc_window_end(&accepted, &config).unwrap_or_default();
        assert_eq!(last_cooc, 30 * M);
        assert_eq!(
            crate::oracle::last_window_end(&accepted, &config),
            Some(21 * M)
        );
        assert_eq!(
            summary(&related(&accepted, &config, last_cooc)),
            vec![
                entry("a", 10 * M, &[("b", 1, 1.0)]),
                entry("b", 10 * M, &[("a", 1, 1.0)]),
                entry("a", 30 * M, &[("b", 1, half_sqrt2)]),
                entry("b", 30 * M, &[("a", 1, half_sqrt2)]),
            ]
        );
    }

    #[test]
    fn views_cw_is_counted_over_the_cooc_window() {
        let config = SemanticsConfig {
            cooc_min_support: 1,
            cooc_window: Millis::minutes(20),
            cooc_slide: Millis::minutes(10),
            related_interval: Millis::minutes(10),
            ..SemanticsConfig::default()
        };
        assert!(config.validate().is_empty());
        let accepted = vec![
            event("e1", "u2", "b", 5 * M),
            event("e2", "u3", "a", 10 * M),
            // The pair {a, b} at 15 min.
            event("e3", "u1", "a", 14 * M),
            event("e4", "u1", "b", 15 * M),
            // On the end of the window [0, 20 min): counted from the next one.
            event("e5", "u5", "a", 20 * M),
            // Keeps the replay going to L_c = 30 min.
            event("e6", "u4", "c", 25 * M),
        ];
        let key = |a: &str| ("g1".to_string(), a.to_string());
        let score_of_a = |end: u64| {
            related_lists_at(&accepted, &config, end)
                .get(&key("a"))
                .map(|items| items[0].score)
        };
        // [0, 20 min): views a 2 (10, 14 min), b 2 (5, 15 min).
        assert_eq!(score_of_a(20 * M), Some(related_score(1, 2, 2)));
        // [10 min, 30 min): a 3 (10 min is in, 20 min now too), b 1 (5 min has left).
        assert_eq!(score_of_a(30 * M), Some(related_score(1, 3, 1)));
        let last_cooc = crate::oracle::last_cooc_window_end(&accepted, &config).unwrap_or_default();
        assert_eq!(last_cooc, 30 * M);
        let third = related_score(1, 3, 1);
        assert_eq!(
            summary(&related(&accepted, &config, last_cooc)),
            vec![
                entry("a", 20 * M, &[("b", 1, 0.5)]),
                entry("b", 20 * M, &[("a", 1, 0.5)]),
                entry("a", 30 * M, &[("b", 1, third)]),
                entry("b", 30 * M, &[("a", 1, third)]),
            ]
        );
    }

    #[test]
    fn exact_ties_fall_to_article_id_whatever_the_f64s() {
        // Partners of a: b with cooc 2 and 4 views, c with cooc 7 and 49 views; a has 8 views. Both
        // scores are exactly 2 / sqrt(32) = 7 / sqrt(392), but the f64 of c is one unit higher, so
        // ordering by f64 would put c first.
        let config = SemanticsConfig::default();
        let mut accepted = Vec::new();
        let mut read = |user: &str, article: &str| {
            let n = accepted.len() as u64;
            accepted.push(event(&format!("e{n:03}"), user, article, n * 1_000));
        };
        // Two sessions read a, b, c; five read a, c: cooc(a, b) = 2, cooc(a, c) = 7.
        for user in ["t1", "t2"] {
            for article in ["a", "b", "c"] {
                read(user, article);
            }
        }
        for user in ["t3", "t4", "t5", "t6", "t7"] {
            read(user, "a");
            read(user, "c");
        }
        // Lone views up to 8 of a, 4 of b and 49 of c (re-reads form no pairs).
        read("s1", "a");
        for _ in 0..2 {
            read("s2", "b");
        }
        for _ in 0..42 {
            read("s3", "c");
        }
        let (score_b, score_c) = (related_score(2, 8, 4), related_score(7, 8, 49));
        assert!(score_c > score_b, "the f64s differ: {score_b} {score_c}");

        let lists = related_lists_at(&accepted, &config, 10 * M);
        let a: Vec<_> = lists[&("g1".to_string(), "a".to_string())]
            .iter()
            .map(|i| (i.article_id.as_str(), i.cooc, i.score))
            .collect();
        assert_eq!(a, vec![("b", 2, score_b), ("c", 7, score_c)]);
        // The emitted record has the same order.
        let last_cooc = crate::oracle::last_cooc_window_end(&accepted, &config).unwrap_or_default();
        let emitted = summary(&related(&accepted, &config, last_cooc));
        assert!(emitted.contains(&entry("a", 10 * M, &[("b", 2, score_b), ("c", 7, score_c)])));
    }
}
