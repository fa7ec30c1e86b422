//! Rankings: the popular and trending lists of each portal at each final window.
//!
//! Consumes the per-article [`ArticleWindowStats`] changes of the trending windows, routed by
//! portal, and keeps two incremental [`TopN`] rankings per portal: by views (popular) and by the
//! trending score ([`crate::score::trending_score`], articles with a positive score only). At every
//! final window `T` it emits a `popular` and a `trending` feature for each portal that has a view in
//! the window (`docs/semantics-notes.md` N12–N14), even when nothing changed since the last window.
//! At the end of input, windows stop at the event horizon (N9).

use std::collections::{BTreeMap, HashMap};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::features::{Feature, RankedItem, RankingKind};
use crate::ids::hash_str;
use crate::score::trending_score;

use super::held::HeldCapability;
use super::top_n::{Descending, OrderedScore, TopN};
use super::window_stats::ArticleWindowStats;

/// What the rankings need to know about the windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankingSpec {
    /// Window length (`trending_window`).
    pub window: u64,
    /// Recent part (`trending_recent`).
    pub recent: u64,
    /// Window step.
    pub slide: u64,
    /// Ranking length.
    pub top_n: usize,
}

#[derive(Clone, Debug, Default)]
struct PortalRankings {
    stats: HashMap<String, ArticleWindowStats>,
    popular: TopN<String, Descending<u64>>,
    trending: TopN<String, Descending<OrderedScore>>,
}

impl PortalRankings {
    fn apply(&mut self, stats: ArticleWindowStats, spec: &RankingSpec) {
        let article = stats.article_id.clone();
        if stats.views == 0 {
            self.popular.remove(&article);
            self.trending.remove(&article);
            self.stats.remove(&article);
            return;
        }
        self.popular
            .upsert(article.clone(), Descending(stats.views));
        let score = trending_score(
            stats.recent_users,
            stats.recent_engaged_users,
            stats.older_views,
            spec.recent,
            spec.window,
        );
        if score > 0.0 {
            self.trending
                .upsert(article.clone(), Descending(OrderedScore(score)));
        } else {
            self.trending.remove(&article);
        }
        self.stats.insert(article, stats);
    }

    fn items<R>(
        &self,
        ranking: &TopN<String, R>,
        n: usize,
        score: impl Fn(&R) -> f64,
    ) -> Vec<RankedItem>
    where
        R: Ord + Clone,
    {
        ranking
            .top(n)
            .filter_map(|(article, rank)| {
                self.stats.get(article).map(|stats| RankedItem {
                    article_id: article.clone(),
                    views: stats.views,
                    engaged_views: stats.engaged_views,
                    score: score(rank),
                })
            })
            .collect()
    }
}

/// The rankings of the portals routed to one worker.
#[derive(Clone, Debug)]
pub struct RankingsState {
    spec: RankingSpec,
    portals: BTreeMap<String, PortalRankings>,
    /// Changes not applied yet, by window end.
    stash: BTreeMap<u64, Vec<ArticleWindowStats>>,
    /// The last window emitted.
    emitted_until: Option<u64>,
    /// The end of the last window holding an event, over all workers.
    horizon: u64,
}

impl RankingsState {
    /// Empty state.
    pub fn new(spec: RankingSpec) -> Self {
        RankingsState {
            spec,
            portals: BTreeMap::new(),
            stash: BTreeMap::new(),
            emitted_until: None,
            horizon: 0,
        }
    }

    /// Queues a change for its window.
    pub fn insert(&mut self, stats: ArticleWindowStats) {
        self.stash.entry(stats.window_end).or_default().push(stats);
    }

    /// Raises the event horizon.
    pub fn observe_horizon(&mut self, horizon: u64) {
        self.horizon = self.horizon.max(horizon);
    }

    /// Whether there is nothing left to emit.
    pub fn is_idle(&self) -> bool {
        self.portals.is_empty() && self.stash.is_empty()
    }

    /// Emits every final window `T ≤ limit`, in order.
    pub fn advance(&mut self, limit: u64, out: &mut Vec<Feature>) {
        let RankingSpec {
            window,
            slide,
            top_n,
            ..
        } = self.spec;
        loop {
            let next_stashed = self.stash.keys().next().copied();
            let next = match (self.emitted_until, self.portals.is_empty()) {
                // Something is ranked: every window until it empties gets a record.
                (Some(last), false) => last + slide,
                // Nothing ranked: skip ahead to the next change.
                _ => match next_stashed {
                    Some(next) => next,
                    None => return,
                },
            };
            if next > limit {
                return;
            }
            for stats in self.stash.remove(&next).unwrap_or_default() {
                let portal = self.portals.entry(stats.portal.clone()).or_default();
                portal.apply(stats, &self.spec);
            }
            self.portals
                .retain(|_, rankings| !rankings.popular.is_empty());
            for (portal, rankings) in &self.portals {
                let start = next.saturating_sub(window);
                let popular = rankings.items(&rankings.popular, top_n, |rank| rank.0 as f64);
                let trending = rankings.items(&rankings.trending, top_n, |rank| rank.0.0);
                out.push(Feature::ranking(
                    RankingKind::Popular,
                    portal,
                    start,
                    next,
                    popular,
                ));
                out.push(Feature::ranking(
                    RankingKind::Trending,
                    portal,
                    start,
                    next,
                    trending,
                ));
            }
            self.emitted_until = Some(next);
        }
    }
}

/// Ranks articles per portal at each final window.
pub trait Rankings<'scope> {
    /// `popular` and `trending` features, each at time `window_end − slide`.
    fn rankings(
        self,
        horizon: StreamVec<'scope, u64, u64>,
        spec: RankingSpec,
    ) -> StreamVec<'scope, u64, Feature>;
}

impl<'scope> Rankings<'scope> for StreamVec<'scope, u64, ArticleWindowStats> {
    fn rankings(
        self,
        horizon: StreamVec<'scope, u64, u64>,
        spec: RankingSpec,
    ) -> StreamVec<'scope, u64, Feature> {
        let route = Exchange::new(|stats: &ArticleWindowStats| hash_str(&stats.portal));
        let horizon_route = timely::dataflow::channels::pact::Pipeline;
        self.binary_frontier(
            horizon,
            route,
            horizon_route,
            "Rankings",
            move |_capability, _info| {
                let mut state = RankingsState::new(spec);
                let mut held = HeldCapability::default();
                let mut out = Vec::new();
                move |(stats, stats_frontier), (horizon, horizon_frontier), output| {
                    stats.for_each(|cap, data| {
                        held.hold(&cap);
                        for change in data.drain(..) {
                            state.insert(change);
                        }
                    });
                    horizon.for_each(|_cap, data| {
                        for value in data.drain(..) {
                            state.observe_horizon(value);
                        }
                    });
                    let frontier = [
                        stats_frontier.frontier().first(),
                        horizon_frontier.frontier().first(),
                    ]
                    .into_iter()
                    .flatten()
                    .min()
                    .copied();
                    // Windows past the last event's are never final (N9); see `related` for why this
                    // only ever binds at the end of input.
                    let limit = frontier.unwrap_or(u64::MAX).min(state.horizon);
                    state.advance(limit, &mut out);
                    emit_by_window(&held, &mut out, spec.slide, output);
                    match frontier {
                        Some(time) if !state.is_idle() => held.downgrade(time),
                        _ => held.release(),
                    }
                }
            },
        )
    }
}

/// Sends features, each at `final_ts − slide` (the last tick of its window), grouped by time.
pub(crate) fn emit_by_window(
    held: &HeldCapability,
    out: &mut Vec<Feature>,
    slide: u64,
    output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
        '_,
        u64,
        timely::container::CapacityContainerBuilder<Vec<Feature>>,
    >,
) {
    if let Some(cap) = held.get() {
        let mut by_time: BTreeMap<u64, Vec<Feature>> = BTreeMap::new();
        for feature in out.drain(..) {
            let time = feature.final_ts().saturating_sub(slide).max(*cap.time());
            by_time.entry(time).or_default().push(feature);
        }
        for (time, features) in by_time {
            output
                .session(&cap.delayed(&time))
                .give_iterator(features.into_iter());
        }
    }
    out.clear();
}
