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

use crate::checkpoint::entries::{Entry, EntryWriter};
use crate::checkpoint::{CheckpointError, Checkpointed, OperatorStates};
use crate::event::Id;
use crate::features::{Feature, RankedItem, RankingKind};
use crate::ids::{FastMap, hash_str};
use crate::live::LiveUpdate;
use crate::score::trending_score;

use super::held::{HeldCapability, joint_frontier};
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
    stats: FastMap<Id, ArticleWindowStats>,
    popular: TopN<Id, Descending<u64>>,
    trending: TopN<Id, Descending<OrderedScore>>,
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
        ranking: &TopN<Id, R>,
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
                    article_id: article.to_string(),
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
    portals: BTreeMap<Id, PortalRankings>,
    /// Changes not applied yet, by window end.
    stash: BTreeMap<u64, Vec<ArticleWindowStats>>,
    /// The last window emitted.
    emitted_until: Option<u64>,
    /// The end of the last window holding an event, over all workers.
    horizon: u64,
    /// Per portal, the window still filling and the provisional statistics received for it.
    provisional: BTreeMap<Id, (u64, FastMap<Id, ArticleWindowStats>)>,
    /// Portals whose provisional ranking changed since it was last pushed.
    provisional_dirty: BTreeSet<Id>,
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
            emitted_until: None,
            horizon: 0,
            provisional: BTreeMap::new(),
            provisional_dirty: BTreeSet::new(),
        }
    }

    /// Queues a final change for its window, or records a provisional one for the live view.
    pub fn insert(&mut self, stats: ArticleWindowStats) {
        if !stats.provisional {
            self.stash.entry(stats.window_end).or_default().push(stats);
            return;
        }
        if self
            .emitted_until
            .is_some_and(|until| stats.window_end <= until)
        {
            return; // the window is final already
        }
        let entry = self
            .provisional
            .entry(stats.portal.clone())
            .or_insert_with(|| (stats.window_end, FastMap::default()));
        if stats.window_end > entry.0 {
            *entry = (stats.window_end, FastMap::default());
        }
        if stats.window_end == entry.0 {
            self.provisional_dirty.insert(stats.portal.clone());
            entry.1.insert(stats.article_id.clone(), stats);
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
                rankings.apply(stats.clone(), &self.spec);
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
                    portal: portal.to_string(),
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
                let portal = self.portals.entry(stats.portal.clone()).or_default();
                portal.apply(stats, &self.spec);
            }
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
                        portal: portal.to_string(),
                        window_start: start,
                        window_end: next,
                        watermark: next,
                        is_final: true,
                        items: items.clone(),
                    });
                    out.push(Feature::ranking(kind, portal, start, next, items));
                }
            }
            self.emitted_until = Some(next);
            self.provisional
                .retain(|_, (window_end, _)| *window_end > next);
        }
    }
}

/// What rankings keep per portal in a checkpoint; the top-N orders are rebuilt from the stats.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPortal {
    portal: Id,
    stats: Vec<ArticleWindowStats>,
    stash: Vec<ArticleWindowStats>,
    provisional: Option<(u64, Vec<ArticleWindowStats>)>,
    provisional_dirty: bool,
}

/// One entry per portal (routed like the portal's statistics) and a shared entry with the last
/// emitted window and the horizon, merged by maximum.
impl Checkpointed for RankingsState {
    fn save(&self, out: &mut EntryWriter) -> Result<(), CheckpointError> {
        let mut portals: BTreeMap<&Id, SavedPortal> = BTreeMap::new();
        let saved = |portal: &Id| -> SavedPortal {
            SavedPortal {
                portal: portal.clone(),
                stats: Vec::new(),
                stash: Vec::new(),
                provisional: None,
                provisional_dirty: false,
            }
        };
        for (portal, rankings) in &self.portals {
            portals
                .entry(portal)
                .or_insert_with(|| saved(portal))
                .stats
                .extend(rankings.stats.values().cloned());
        }
        for stats in self.stash.values().flatten() {
            portals
                .entry(&stats.portal)
                .or_insert_with(|| saved(&stats.portal))
                .stash
                .push(stats.clone());
        }
        for (portal, (window_end, overrides)) in &self.provisional {
            portals
                .entry(portal)
                .or_insert_with(|| saved(portal))
                .provisional = Some((*window_end, overrides.values().cloned().collect()));
        }
        for portal in &self.provisional_dirty {
            portals
                .entry(portal)
                .or_insert_with(|| saved(portal))
                .provisional_dirty = true;
        }
        for (portal, saved) in portals {
            out.keyed(hash_str(portal), &saved)?;
        }
        out.shared(&(self.emitted_until, self.horizon))
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        if entry.route.is_none() {
            let (emitted_until, horizon): (Option<u64>, u64) = entry.decode()?;
            self.emitted_until = self.emitted_until.max(emitted_until);
            self.horizon = self.horizon.max(horizon);
            return Ok(());
        }
        let saved: SavedPortal = entry.decode()?;
        if !saved.stats.is_empty() {
            let rankings = self.portals.entry(saved.portal.clone()).or_default();
            for stats in saved.stats {
                rankings.apply(stats, &self.spec);
            }
        }
        for stats in saved.stash {
            self.stash.entry(stats.window_end).or_default().push(stats);
        }
        if let Some((window_end, overrides)) = saved.provisional {
            let overrides = overrides
                .into_iter()
                .map(|stats| (stats.article_id.clone(), stats))
                .collect();
            self.provisional
                .insert(saved.portal.clone(), (window_end, overrides));
        }
        if saved.provisional_dirty {
            self.provisional_dirty.insert(saved.portal);
        }
        Ok(())
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
        let route = Exchange::new(|stats: &ArticleWindowStats| hash_str(&stats.portal));
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

/// Sends each record at its time (never before the held capability's), grouped by time.
pub(crate) fn emit_at<D: Clone + 'static>(
    held: &HeldCapability,
    out: &mut Vec<(u64, D)>,
    output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
        '_,
        u64,
        timely::container::CapacityContainerBuilder<Vec<D>>,
    >,
) {
    if let Some(cap) = held.get() {
        let mut by_time: BTreeMap<u64, Vec<D>> = BTreeMap::new();
        for (time, record) in out.drain(..) {
            by_time
                .entry(time.max(*cap.time()))
                .or_default()
                .push(record);
        }
        for (time, records) in by_time {
            output
                .session(&cap.delayed(&time))
                .give_iterator(records.into_iter());
        }
    }
    out.clear();
}
