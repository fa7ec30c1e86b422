//! Rankings: the popular and trending lists of each portal at each final window.
//!
//! Consumes the per-article [`ArticleWindowStats`] changes of the trending windows, routed by
//! portal, and keeps two incremental [`TopN`] rankings per portal: by views (popular) and by the
//! trending score ([`crate::score::trending_score`], articles with a positive score only). At every
//! final window `T` it emits a `popular` and a `trending` feature for each portal that has a view in
//! the window (`docs/semantics-notes.md` N12–N14), even when nothing changed since the last window.
//! At the end of input, windows stop at the event horizon (N9).

use std::collections::{BTreeMap, BTreeSet};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

use crate::checkpoint::parts::BucketParts;
use crate::checkpoint::{
    ChangeWriter, CheckpointError, Checkpointed, DeferredChanges, Entry, OperatorStates, Placement,
    StateSize, key_group,
};
use crate::features::{Feature, RankedItem, RankingKind};
use crate::ids::{FastMap, FastSet};
use crate::intern::{Article, Portal};
use crate::live::LiveUpdate;
use crate::score::trending_score;

use super::held::{HeldCapability, emit_at, joint_frontier};
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
    stats: FastMap<Article, ArticleWindowStats>,
    popular: TopN<Article, Descending<u64>>,
    trending: TopN<Article, Descending<OrderedScore>>,
}

impl PortalRankings {
    fn apply(&mut self, stats: ArticleWindowStats, spec: &RankingSpec) {
        let article = stats.article;
        if stats.views == 0 {
            self.popular.remove(&article);
            self.trending.remove(&article);
            self.stats.remove(&article);
            return;
        }
        self.popular.upsert(article, Descending(stats.views));
        let score = trending_score(
            stats.recent_users,
            stats.recent_engaged_users,
            stats.older_views,
            spec.recent,
            spec.window,
        );
        if score > 0.0 {
            self.trending
                .upsert(article, Descending(OrderedScore(score)));
        } else {
            self.trending.remove(&article);
        }
        self.stats.insert(article, stats);
    }

    fn items<R>(
        &self,
        ranking: &TopN<Article, R>,
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
                    article_id: article.id().to_string(),
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
    portals: BTreeMap<Portal, PortalRankings>,
    /// Changes not applied yet, by window end.
    stash: BTreeMap<u64, Vec<ArticleWindowStats>>,
    /// The stash's records that the checkpoint does not hold yet.
    stash_unsaved: BTreeMap<u64, usize>,
    stash_parts: BucketParts,
    /// Articles whose statistics changed since the last checkpoint.
    changed: FastSet<Article>,
    /// The last window emitted.
    emitted_until: Option<u64>,
    /// The end of the last window holding an event, over all workers.
    horizon: u64,
    saved_marks: Option<(Option<u64>, u64)>,
    /// Per portal, the window still filling and the provisional statistics received for it.
    provisional: BTreeMap<Portal, (u64, FastMap<Article, ArticleWindowStats>)>,
    /// Portals whose provisional ranking changed since it was last pushed.
    provisional_dirty: BTreeSet<Portal>,
}

/// What the rankings operator emits.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RankingsOutput {
    /// A final `popular` or `trending` feature.
    Feature(Feature),
    /// A ranking for the live view (final or provisional).
    Live(LiveUpdate),
}

impl RankingsState {
    /// Empty state.
    pub fn new(spec: RankingSpec) -> Self {
        RankingsState {
            spec,
            portals: BTreeMap::new(),
            stash: BTreeMap::new(),
            stash_unsaved: BTreeMap::new(),
            stash_parts: BucketParts::new(STASH_TAG),
            changed: FastSet::default(),
            emitted_until: None,
            horizon: 0,
            saved_marks: None,
            provisional: BTreeMap::new(),
            provisional_dirty: BTreeSet::new(),
        }
    }

    /// Queues a final change for its window, or records a provisional one for the live view.
    pub fn insert(&mut self, stats: ArticleWindowStats) {
        if !stats.provisional {
            self.stash.entry(stats.window_end).or_default().push(stats);
            *self.stash_unsaved.entry(stats.window_end).or_default() += 1;
            return;
        }
        if self
            .emitted_until
            .is_some_and(|until| stats.window_end <= until)
        {
            return; // the window is final already
        }
        let portal = stats.article.portal();
        let entry = self
            .provisional
            .entry(portal)
            .or_insert_with(|| (stats.window_end, FastMap::default()));
        if stats.window_end > entry.0 {
            *entry = (stats.window_end, FastMap::default());
        }
        if stats.window_end == entry.0 {
            self.provisional_dirty.insert(portal);
            entry.1.insert(stats.article, stats);
        }
    }

    /// The provisional rankings that changed, each as it stands with the events seen so far
    /// (`watermark`: every event before it has been counted).
    pub fn previews(&mut self, watermark: u64, out: &mut Vec<LiveUpdate>) {
        let RankingSpec { window, top_n, .. } = self.spec;
        for portal in std::mem::take(&mut self.provisional_dirty) {
            let Some((window_end, overrides)) = self.provisional.get(&portal) else {
                continue;
            };
            let mut rankings = self.portals.get(&portal).cloned().unwrap_or_default();
            for stats in overrides.values() {
                rankings.apply(*stats, &self.spec);
            }
            let items = [
                (
                    RankingKind::Popular,
                    rankings.items(&rankings.popular, top_n, |rank| rank.0 as f64),
                ),
                (
                    RankingKind::Trending,
                    rankings.items(&rankings.trending, top_n, |rank| rank.0.0),
                ),
            ];
            for (kind, items) in items {
                out.push(LiveUpdate::Ranking {
                    kind,
                    portal: portal.name().to_string(),
                    window_start: window_end.saturating_sub(window),
                    window_end: *window_end,
                    watermark,
                    is_final: false,
                    items,
                });
            }
        }
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
        let mut live = Vec::new();
        self.advance_with_live(limit, out, &mut live);
    }

    /// Like [`RankingsState::advance`], also pushing each final ranking for the live view.
    pub fn advance_with_live(
        &mut self,
        limit: u64,
        out: &mut Vec<Feature>,
        live: &mut Vec<LiveUpdate>,
    ) {
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
                let portal = self.portals.entry(stats.article.portal()).or_default();
                portal.apply(stats, &self.spec);
                self.changed.insert(stats.article);
            }
            self.stash_unsaved.remove(&next);
            self.stash_parts.drop_bucket(next);
            self.portals
                .retain(|_, rankings| !rankings.popular.is_empty());
            for (portal, rankings) in &self.portals {
                let start = next.saturating_sub(window);
                let popular = rankings.items(&rankings.popular, top_n, |rank| rank.0 as f64);
                let trending = rankings.items(&rankings.trending, top_n, |rank| rank.0.0);
                for (kind, items) in [
                    (RankingKind::Popular, popular),
                    (RankingKind::Trending, trending),
                ] {
                    live.push(LiveUpdate::Ranking {
                        kind,
                        portal: portal.name().to_string(),
                        window_start: start,
                        window_end: next,
                        watermark: next,
                        is_final: true,
                        items: items.clone(),
                    });
                    out.push(Feature::ranking(kind, portal.name(), start, next, items));
                }
            }
            self.emitted_until = Some(next);
            self.provisional
                .retain(|_, (window_end, _)| *window_end > next);
        }
    }
}

/// The statistics of an article as rankings hold them in a checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedStats {
    window_end: u64,
    views: u64,
    engaged_views: u64,
    older_views: u64,
    recent_users: u64,
    recent_engaged_users: u64,
}

/// Articles whose statistics changed since the previous checkpoint (`None`: dropped).
struct StatsChanges(Vec<(Article, Option<SavedStats>)>);

impl DeferredChanges for StatsChanges {
    fn write(self: Box<Self>, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        for (article, stats) in &self.0 {
            let portal = article.portal();
            let scope = Placement::of_route(portal.route());
            let key = (STATS_TAG, portal.name(), article.id());
            match stats {
                Some(stats) => out.put(scope, &key, stats)?,
                None => out.delete(scope, &key)?,
            }
        }
        Ok(())
    }
}

const STATS_TAG: u8 = 0;
const STASH_TAG: u8 = 1;
const MARKS_TAG: u8 = 2;

/// Each ranked article's statistics keyed by `(portal, article)` in the portal's key group; the
/// changes not applied yet as parts of their window; the last window emitted and the horizon per
/// worker and run (a restore takes the largest). The top-N orders are rebuilt from the statistics;
/// provisional rankings are not kept (the next preview makes them again).
impl Checkpointed for RankingsState {
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        // Copied out now (numbers), encoded once the dataflow has resumed.
        let mut changed: Vec<Article> = self.changed.drain().collect();
        changed.sort_unstable();
        let stats = changed
            .into_iter()
            .map(|article| {
                let saved = self
                    .portals
                    .get(&article.portal())
                    .and_then(|p| p.stats.get(&article))
                    .map(|stats| SavedStats {
                        window_end: stats.window_end,
                        views: stats.views,
                        engaged_views: stats.engaged_views,
                        older_views: stats.older_views,
                        recent_users: stats.recent_users,
                        recent_engaged_users: stats.recent_engaged_users,
                    });
                (article, saved)
            })
            .collect();
        out.defer(StatsChanges(stats))?;
        self.stash_parts.save_deletes(out)?;
        for (window_end, unsaved) in std::mem::take(&mut self.stash_unsaved) {
            if let Some(stash) = self.stash.get(&window_end) {
                let new = &stash[stash.len().saturating_sub(unsaved)..];
                self.stash_parts.write(out, window_end, new)?;
            }
        }
        let marks = (self.emitted_until, self.horizon);
        if self.saved_marks != Some(marks) {
            out.put(
                Placement::Broadcast,
                &(MARKS_TAG, out.run(), out.worker() as u32),
                &marks,
            )?;
            self.saved_marks = Some(marks);
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        if self.stash_parts.is_part(&entry) {
            let window_end = self.stash_parts.restored(&entry)?;
            let stash: Vec<ArticleWindowStats> = entry.value()?;
            let owned = stash
                .into_iter()
                .filter(|stats| entry.owns(stats.article.portal().route()));
            self.stash.entry(window_end).or_default().extend(owned);
            return Ok(());
        }
        if entry.placement == Placement::Broadcast {
            let (emitted_until, horizon): (Option<u64>, u64) = entry.value()?;
            self.emitted_until = self.emitted_until.max(emitted_until);
            self.horizon = self.horizon.max(horizon);
            return Ok(());
        }
        let (_, portal, article): (u8, String, String) = entry.key()?;
        let saved: SavedStats = entry.value()?;
        let article = Article::intern_names(&portal, &article);
        let stats = ArticleWindowStats {
            article,
            window_end: saved.window_end,
            views: saved.views,
            engaged_views: saved.engaged_views,
            older_views: saved.older_views,
            recent_users: saved.recent_users,
            recent_engaged_users: saved.recent_engaged_users,
            provisional: false,
        };
        self.portals
            .entry(article.portal())
            .or_default()
            .apply(stats, &self.spec);
        Ok(())
    }

    fn finish_restore(&mut self) -> Result<(), CheckpointError> {
        self.saved_marks = Some((self.emitted_until, self.horizon));
        Ok(())
    }

    fn size(&self) -> StateSize {
        let articles: usize = self.portals.values().map(|p| p.stats.len()).sum();
        let stash: usize = self.stash.values().map(Vec::capacity).sum();
        StateSize {
            // The statistics, and two ranking entries per article (tree nodes and index).
            bytes: (articles * (std::mem::size_of::<(Article, ArticleWindowStats)>() + 2 * 48)
                + stash * std::mem::size_of::<ArticleWindowStats>()) as u64,
            entries: articles as u64,
        }
    }
}

/// Ranks articles per portal at each final window.
pub trait Rankings<'scope> {
    /// `popular` and `trending` features, each at time `window_end − slide`, and rankings for the
    /// live view: every final one, and provisional ones when provisional statistics arrive.
    fn rankings(
        self,
        horizon: StreamVec<'scope, u64, u64>,
        spec: RankingSpec,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, RankingsOutput>;
}

impl<'scope> Rankings<'scope> for StreamVec<'scope, u64, ArticleWindowStats> {
    fn rankings(
        self,
        horizon: StreamVec<'scope, u64, u64>,
        spec: RankingSpec,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, RankingsOutput> {
        let route = Exchange::new(|stats: &ArticleWindowStats| {
            u64::from(key_group(stats.article.portal().route()))
        });
        let state = states.attach("rankings", RankingsState::new(spec));
        self.binary_frontier(
            horizon,
            route,
            Pipeline,
            "Rankings",
            move |capability, _info| {
                let mut held = HeldCapability::default();
                if !state.borrow().is_idle() {
                    held.hold_initial(capability);
                }
                let (mut features, mut live) = (Vec::new(), Vec::new());
                let mut out: Vec<(u64, RankingsOutput)> = Vec::new();
                move |(stats, stats_frontier), (horizon, horizon_frontier), output| {
                    let mut state = state.borrow_mut();
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
                    let frontier = joint_frontier(stats_frontier, horizon_frontier);
                    // Windows past the last event's are never final (N9); see `related` for why this
                    // only ever binds at the end of input.
                    let limit = frontier.unwrap_or(u64::MAX).min(state.horizon);
                    state.advance_with_live(limit, &mut features, &mut live);
                    let slide = spec.slide;
                    out.extend(features.drain(..).map(|f| {
                        (
                            f.final_ts().saturating_sub(slide),
                            RankingsOutput::Feature(f),
                        )
                    }));
                    out.extend(
                        live.drain(..)
                            .map(|u| (live_time(&u, slide), RankingsOutput::Live(u))),
                    );
                    if let Some(watermark) = frontier {
                        let mut previews = Vec::new();
                        state.previews(watermark, &mut previews);
                        out.extend(
                            previews
                                .into_iter()
                                .map(|u| (watermark, RankingsOutput::Live(u))),
                        );
                    }
                    emit_at(&held, &mut out, output);
                    match frontier {
                        Some(time) if !state.is_idle() => held.downgrade(time),
                        _ => held.release(),
                    }
                }
            },
        )
    }
}

fn live_time(update: &LiveUpdate, slide: u64) -> u64 {
    match update {
        LiveUpdate::Ranking { window_end, .. } | LiveUpdate::Related { window_end, .. } => {
            window_end.saturating_sub(slide)
        }
        // Not emitted by rankings: reads are the serving layer's, saved with checkpoints.
        LiveUpdate::Reads { reads, .. } => reads.iter().map(|(_, ts)| *ts).max().unwrap_or(0),
    }
}
