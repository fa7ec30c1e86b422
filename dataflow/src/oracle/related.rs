//! Step 6: the related lists of each final co-occurrence window (N16) and their emission (N17).

use std::collections::{BTreeMap, BTreeSet};

use super::{pairs, window_ends, window_slice};
use crate::config::SemanticsConfig;
use crate::event::Event;
use crate::features::{Feature, RelatedItem};
use crate::score::related_score;

/// `(portal, article_id)`.
type ArticleKey = (String, String);

/// The related lists of the window `[window_end − cooc_window, window_end)` (N16), for every
/// `(portal, article)` whose list is not empty.
///
/// `cooc(a, b)` is the number of pairs `{a, b}` (see [`pairs`]) with their `ts` in the window and
/// `views_cw(x)` the number of accepted events of `x` in it. The partners of `a` are the `b` with
/// `cooc(a, b) ≥ cooc_min_support` and `views_cw(b) > 0` (none when `views_cw(a) = 0`), scored
/// `cooc / sqrt(views_cw(a) · views_cw(b))`, by score descending then `article_id` ascending, the
/// first `top_n`.
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
            partners.sort_by(|x, y| {
                y.score
                    .total_cmp(&x.score)
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

/// The `related` records of a replay whose last final window is `last_window_end` (N17).
///
/// Final windows `T` (see [`super::window_ends`]) are processed in increasing order. For article `a`
/// at `T`: emit `related(a)` when it differs from the last list emitted for `a` (initially the empty
/// list) and either nothing was emitted for `a` yet or `T − last_emitted_T ≥ related_interval`.
/// Then, at the end of the replay, every article whose list at `last_window_end` differs from its
/// last emitted one is emitted with `window_end = last_window_end`, whatever the interval. A list
/// that became empty is emitted with no items.
///
/// The articles looked at in a window are those with a non-empty list there and those whose last
/// emitted list is not empty: any other article has an empty list now and had an empty one before,
/// so it has nothing to emit. (An article with views but no pair in the window has an empty list.)
pub fn related(accepted: &[Event], config: &SemanticsConfig, last_window_end: u64) -> Vec<Feature> {
    let all_pairs = pairs(accepted, config);
    let numbered = Numbered::new(accepted, &all_pairs);
    let mut emitter = Emitter {
        config,
        numbered: &numbered,
        last: BTreeMap::new(),
        features: Vec::new(),
    };
    for window_end in window_ends(accepted, config, last_window_end) {
        emitter.window(window_end, numbered.lists(config, window_end), true);
    }
    // End of the replay: the last lists are emitted, whatever the interval.
    emitter.window(
        last_window_end,
        numbered.lists(config, last_window_end),
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
        assert!(related(&accepted, &config, 21 * M).is_empty());
    }

    #[test]
    fn emission_is_throttled_by_related_interval_and_flushed_at_the_end() {
        let config = SemanticsConfig {
            cooc_min_support: 1,
            related_interval: Millis::minutes(10),
            ..SemanticsConfig::default()
        };
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
        let last = crate::oracle::last_window_end(&accepted, &config).unwrap_or_default();
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
        let accepted = vec![
            event("e1", "u1", "a", 0),
            event("e2", "u1", "b", 1_000),
            // Keeps the replay going to L = 31 min.
            event("e3", "u2", "c", 30 * M),
        ];
        let features = related(&accepted, &config, 31 * M);
        assert_eq!(
            summary(&features),
            vec![
                entry("a", M, &[("b", 1, 1.0)]),
                entry("b", M, &[("a", 1, 1.0)]),
                // The pair leaves [T − 10 min, T) at T = 11 min, exactly one interval later.
                entry("a", 11 * M, &[]),
                entry("b", 11 * M, &[]),
            ]
        );
        let Feature::Related(gone) = &features[2] else {
            panic!("not related: {features:?}");
        };
        assert_eq!(gone.window_start, M);
        assert!(features[2].to_json().contains(r#""items":[]"#));
    }

    #[test]
    fn a_list_emptied_within_the_interval_is_flushed_empty() {
        let config = SemanticsConfig {
            cooc_min_support: 1,
            cooc_window: Millis::minutes(5),
            related_interval: Millis::minutes(10),
            ..SemanticsConfig::default()
        };
        let accepted = vec![
            event("e1", "u1", "a", 0),
            event("e2", "u1", "b", 1_000),
            event("e3", "u2", "c", 7 * M),
        ];
        // Empty from T = 6 min, but held back until 11 min; the replay ends at L = 8 min.
        let features = related(&accepted, &config, 8 * M);
        assert_eq!(
            summary(&features),
            vec![
                entry("a", M, &[("b", 1, 1.0)]),
                entry("b", M, &[("a", 1, 1.0)]),
                entry("a", 8 * M, &[]),
                entry("b", 8 * M, &[]),
            ]
        );
    }
}
