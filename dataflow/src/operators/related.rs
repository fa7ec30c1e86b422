//! Related articles: the co-occurrence graph over a sliding window, normalised by popularity.
//!
//! For each article `a` of a portal, `related(a)` lists the partners `b` read together with it in at
//! least `cooc_min_support` sessions of the window `[T − cooc_window, T)`, ranked by
//! `cooc(a,b) / sqrt(views(a) · views(b))` ([`crate::score::related_score`]): a pair of two huge
//! articles that co-occur by chance scores low, two niche articles always read together score high.
//!
//! Inputs: the [`ArticlePair`]s of the co-occurrence operator (each pair is routed to both of its
//! articles) and the 24-hour view counts of every article (from a [`WindowStats`] over the
//! co-occurrence window, broadcast so that each worker can normalise by any partner's views),
//! plus the event horizon for the end of a replay.
//!
//! At every final window the lists that may have changed are recomputed: the article's pairs
//! changed, its views changed, or the views of a *qualified* partner changed (a reverse index finds
//! those). A list is emitted when it differs from the last one emitted for the article, at most once
//! per `related_interval`, and once more at the end of a replay (`docs/semantics-notes.md` N16–N17).
//!
//! [`WindowStats`]: super::window_stats::WindowStats

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};

use crate::features::{Feature, RelatedItem};
use crate::ids::{FastMap, FastSet};
use crate::score::related_score;

use super::cooccurrence::ArticlePair;
use super::held::HeldCapability;
use super::rankings::emit_at;
use super::window_stats::{ArticleKey, ArticleWindowStats, article_route};

/// The parameters of `related`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelatedSpec {
    /// `cooc_window`.
    pub window: u64,
    /// Window step.
    pub slide: u64,
    /// List length.
    pub top_n: usize,
    /// `cooc_min_support`.
    pub min_support: u64,
    /// `related_interval`.
    pub interval: u64,
}

/// One side of a pair: `partner` was read with `article` at `ts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectedPair {
    /// The site.
    pub portal: String,
    /// The article whose list this counts towards.
    pub article_id: String,
    /// The partner.
    pub partner: String,
    /// When the pair was formed.
    pub ts: u64,
}

/// The broadcast side input of `related`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelatedSideInput {
    /// A change of an article's views in the co-occurrence window.
    Views(ArticleWindowStats),
    /// The event horizon.
    Horizon(u64),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PairWindow {
    count: u64,
    pending: BTreeMap<u64, u64>,
    entered: VecDeque<(u64, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ArticleRelated {
    partners: FastMap<String, PairWindow>,
    /// The list as last computed (see `stale`).
    current: Vec<RelatedItem>,
    /// Something changed since `current` was computed; it is recomputed before it can be emitted.
    stale: bool,
    last_emitted: Vec<RelatedItem>,
    last_emitted_at: Option<u64>,
    /// The window at which a list that differs, but was throttled, may be emitted.
    wakeup: Option<u64>,
}

/// The co-occurrence windows and related lists of the articles routed to one worker.
#[derive(Clone, Debug)]
pub struct RelatedState {
    spec: RelatedSpec,
    articles: FastMap<ArticleKey, ArticleRelated>,
    /// Window end → pairs whose bucket enters or leaves then.
    visits: BTreeMap<u64, Vec<(ArticleKey, String)>>,
    /// Window end → articles whose throttled list may be emitted then.
    wakeups: BTreeMap<u64, Vec<ArticleKey>>,
    /// Views of every article (all workers') in the current window: portal → article → views.
    views: FastMap<String, FastMap<String, u64>>,
    views_stash: BTreeMap<u64, Vec<ArticleWindowStats>>,
    /// Partner `b` → local articles `a` for which `b` is qualified (`cooc ≥ min_support`).
    qualified_by_partner: FastMap<ArticleKey, FastSet<String>>,
    /// The last window processed.
    processed_until: Option<u64>,
    horizon: u64,
}

impl RelatedState {
    /// Empty state.
    pub fn new(spec: RelatedSpec) -> Self {
        RelatedState {
            spec,
            articles: FastMap::default(),
            visits: BTreeMap::new(),
            wakeups: BTreeMap::new(),
            views: FastMap::default(),
            views_stash: BTreeMap::new(),
            qualified_by_partner: FastMap::default(),
            processed_until: None,
            horizon: 0,
        }
    }

    /// Counts one side of a pair into its bucket (its window must not be final yet).
    pub fn insert_pair(&mut self, pair: DirectedPair) {
        let RelatedSpec { window, slide, .. } = self.spec;
        let tick = pair.ts - pair.ts % slide;
        let key = (pair.portal, pair.article_id);
        let article = self.articles.entry(key.clone()).or_default();
        let partner = article.partners.entry(pair.partner.clone()).or_default();
        let count = partner.pending.entry(tick).or_default();
        *count += 1;
        if *count == 1 {
            let enter = tick + slide;
            for time in [enter, enter + window] {
                self.visits
                    .entry(time)
                    .or_default()
                    .push((key.clone(), pair.partner.clone()));
            }
        }
    }

    /// Applies a side input.
    pub fn insert_side(&mut self, side: RelatedSideInput) {
        match side {
            RelatedSideInput::Views(stats) => self
                .views_stash
                .entry(stats.window_end)
                .or_default()
                .push(stats),
            RelatedSideInput::Horizon(horizon) => self.horizon = self.horizon.max(horizon),
        }
    }

    /// Whether no state is left.
    pub fn is_idle(&self) -> bool {
        self.articles.is_empty() && self.views_stash.is_empty() && self.views.is_empty()
    }

    /// The end of the last window holding an event (all workers).
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    fn next_window(&self) -> Option<u64> {
        [
            self.visits.keys().next(),
            self.wakeups.keys().next(),
            self.views_stash.keys().next(),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied()
    }

    /// Processes every window `T ≤ limit` at which something changes, in order.
    pub fn advance(&mut self, limit: u64, out: &mut Vec<Feature>) {
        while let Some(window_end) = self.next_window().filter(|next| *next <= limit) {
            self.process(window_end, out);
            self.processed_until = Some(window_end);
        }
    }

    /// The end of a replay: after the last window `L`, every list that differs from the one last
    /// emitted is emitted at `L`, whatever the interval (N17).
    pub fn finish(&mut self, last_window: u64, out: &mut Vec<Feature>) {
        self.advance(last_window, out);
        let start = last_window.saturating_sub(self.spec.window);
        let mut keys: Vec<ArticleKey> = self.articles.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let Some(article) = self.articles.get(&key) else {
                continue;
            };
            // A throttled list may have changed since it was last computed.
            let current = if article.stale {
                self.compute(&key)
            } else {
                article.current.clone()
            };
            if self
                .articles
                .get(&key)
                .is_some_and(|article| current != article.last_emitted)
            {
                out.push(Feature::related(
                    &key.0,
                    &key.1,
                    start,
                    last_window,
                    current,
                ));
            }
        }
        self.articles.clear();
        self.visits.clear();
        self.wakeups.clear();
        self.views.clear();
        self.views_stash.clear();
        self.qualified_by_partner.clear();
    }

    fn process(&mut self, window_end: u64, out: &mut Vec<Feature>) {
        let RelatedSpec {
            window,
            slide,
            min_support,
            interval,
            ..
        } = self.spec;
        let mut dirty: Vec<ArticleKey> = Vec::new();

        for stats in self.views_stash.remove(&window_end).unwrap_or_default() {
            let portal_views = self.views.entry(stats.portal.clone()).or_default();
            if stats.views == 0 {
                portal_views.remove(&stats.article_id);
                if portal_views.is_empty() {
                    self.views.remove(&stats.portal);
                }
            } else {
                portal_views.insert(stats.article_id.clone(), stats.views);
            }
            let key = (stats.portal, stats.article_id);
            if let Some(articles) = self.qualified_by_partner.get(&key) {
                dirty.extend(articles.iter().map(|a| (key.0.clone(), a.clone())));
            }
            if self.articles.contains_key(&key) {
                dirty.push(key);
            }
        }

        let window_start = window_end.saturating_sub(window);
        for (key, partner) in self.visits.remove(&window_end).unwrap_or_default() {
            let Some(article) = self.articles.get_mut(&key) else {
                continue;
            };
            let Some(pair) = article.partners.get_mut(&partner) else {
                continue;
            };
            let was_qualified = pair.count >= min_support;
            if let Some(count) = pair.pending.remove(&(window_end - slide)) {
                pair.count += count;
                pair.entered.push_back((window_end - slide, count));
            }
            while pair
                .entered
                .front()
                .is_some_and(|(tick, _)| *tick < window_start)
            {
                if let Some((_, count)) = pair.entered.pop_front() {
                    pair.count -= count;
                }
            }
            let qualified = pair.count >= min_support;
            if pair.count == 0 && pair.pending.is_empty() {
                article.partners.remove(&partner);
            }
            if qualified != was_qualified {
                let partner_key = (key.0.clone(), partner);
                if qualified {
                    self.qualified_by_partner
                        .entry(partner_key)
                        .or_default()
                        .insert(key.1.clone());
                } else if let Some(set) = self.qualified_by_partner.get_mut(&partner_key) {
                    set.remove(&key.1);
                    if set.is_empty() {
                        self.qualified_by_partner.remove(&partner_key);
                    }
                }
            }
            dirty.push(key);
        }

        dirty.extend(self.wakeups.remove(&window_end).unwrap_or_default());
        dirty.sort_unstable();
        dirty.dedup();

        for key in dirty {
            let Some(article) = self.articles.get_mut(&key) else {
                continue;
            };
            if article.wakeup.is_some_and(|due| window_end < due) {
                // Already differs and throttled: only its value at the wake-up matters (N17).
                article.stale = true;
                continue;
            }
            article.wakeup = None;
            let current = self.compute(&key);
            let Some(article) = self.articles.get_mut(&key) else {
                continue;
            };
            article.current = current;
            article.stale = false;
            if article.current != article.last_emitted {
                let due = article
                    .last_emitted_at
                    .map_or(window_end, |at| at + interval);
                if window_end >= due {
                    out.push(Feature::related(
                        &key.0,
                        &key.1,
                        window_start,
                        window_end,
                        article.current.clone(),
                    ));
                    article.last_emitted = article.current.clone();
                    article.last_emitted_at = Some(window_end);
                } else {
                    article.wakeup = Some(due);
                    self.wakeups.entry(due).or_default().push(key.clone());
                }
            }
            if article.partners.is_empty()
                && article.current.is_empty()
                && article.last_emitted.is_empty()
            {
                self.articles.remove(&key);
            }
        }
    }

    fn compute(&self, key: &ArticleKey) -> Vec<RelatedItem> {
        let RelatedSpec {
            top_n, min_support, ..
        } = self.spec;
        let Some(article) = self.articles.get(key) else {
            return Vec::new();
        };
        let Some(portal_views) = self.views.get(&key.0) else {
            return Vec::new();
        };
        let Some(&views_a) = portal_views.get(&key.1) else {
            return Vec::new();
        };
        let mut items: Vec<RelatedItem> = article
            .partners
            .iter()
            .filter(|(_, pair)| pair.count >= min_support)
            .filter_map(|(partner, pair)| {
                let views_b = *portal_views.get(partner)?;
                Some(RelatedItem {
                    article_id: partner.clone(),
                    cooc: pair.count,
                    score: related_score(pair.count, views_a, views_b),
                })
            })
            .collect();
        items.sort_by(|x, y| {
            y.score
                .total_cmp(&x.score)
                .then_with(|| x.article_id.cmp(&y.article_id))
        });
        items.truncate(top_n);
        items
    }
}

/// Maintains related lists from pairs and view counts.
pub trait Related<'scope> {
    /// `related` features at time `window_end − slide`.
    fn related(
        self,
        views: StreamVec<'scope, u64, ArticleWindowStats>,
        horizon: StreamVec<'scope, u64, u64>,
        spec: RelatedSpec,
    ) -> StreamVec<'scope, u64, Feature>;
}

impl<'scope> Related<'scope> for StreamVec<'scope, u64, ArticlePair> {
    fn related(
        self,
        views: StreamVec<'scope, u64, ArticleWindowStats>,
        horizon: StreamVec<'scope, u64, u64>,
        spec: RelatedSpec,
    ) -> StreamVec<'scope, u64, Feature> {
        let directed = self.flat_map(|pair: ArticlePair| {
            let ArticlePair {
                portal,
                article_a,
                article_b,
                ts,
            } = pair;
            [
                DirectedPair {
                    portal: portal.clone(),
                    article_id: article_a.clone(),
                    partner: article_b.clone(),
                    ts,
                },
                DirectedPair {
                    portal,
                    article_id: article_b,
                    partner: article_a,
                    ts,
                },
            ]
        });
        let side = views
            .broadcast()
            .map(RelatedSideInput::Views)
            .concat(horizon.map(RelatedSideInput::Horizon));
        let route =
            Exchange::new(|pair: &DirectedPair| article_route(&pair.portal, &pair.article_id));
        directed.binary_frontier(
            side,
            route,
            Pipeline,
            "Related",
            move |_capability, _info| {
                let mut state = RelatedState::new(spec);
                let mut held = HeldCapability::default();
                let mut out = Vec::new();
                move |(pairs, pairs_frontier), (side, side_frontier), output| {
                    pairs.for_each(|cap, data| {
                        held.hold(&cap);
                        for pair in data.drain(..) {
                            state.insert_pair(pair);
                        }
                    });
                    side.for_each(|cap, data| {
                        held.hold(&cap);
                        for input in data.drain(..) {
                            state.insert_side(input);
                        }
                    });
                    let frontier = [
                        pairs_frontier.frontier().first(),
                        side_frontier.frontier().first(),
                    ]
                    .into_iter()
                    .flatten()
                    .min()
                    .copied();
                    match frontier {
                        // At the end of input, upstream flushes reach past the last event's window at
                        // finite times; those windows are never final (N9). Live, the frontier never
                        // passes the horizon, since the watermark trails the newest event.
                        Some(limit) => {
                            let limit = limit.min(state.horizon());
                            state.advance(limit, &mut out);
                        }
                        None => {
                            let last = state.horizon();
                            state.finish(last, &mut out);
                        }
                    }
                    let mut timed: Vec<(u64, Feature)> = out
                        .drain(..)
                        .map(|f| (f.final_ts().saturating_sub(spec.slide), f))
                        .collect();
                    emit_at(&held, &mut timed, output);
                    match frontier {
                        Some(time) if !state.is_idle() => held.downgrade(time),
                        _ => held.release(),
                    }
                }
            },
        )
    }
}
