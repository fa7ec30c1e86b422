//! Related articles: the co-occurrence graph over a sliding window, normalised by popularity.
//!
//! For each article `a` of a portal, `related(a)` lists the partners `b` read together with it in at
//! least `cooc_min_support` sessions of the co-occurrence window `[T − cooc_window, T)`, ranked by
//! `cooc(a,b) / sqrt(views(a) · views(b))` ([`crate::score::related_score`]), exact ties by
//! `article_id` ([`crate::score::related_order`], N16a): a pair of two huge articles that co-occur
//! by chance scores low, two niche articles always read together score high.
//!
//! Inputs: the [`CoocChange`]s of [`super::pair_counts`] (routed to the article whose list they
//! concern; only partners that qualify are kept here), the co-occurrence-window views of every
//! article (broadcast, so that each worker can normalise by any partner's views) and the event
//! horizon for the end of a replay.
//!
//! Lists are evaluated at final co-occurrence windows (multiples of `cooc_slide`, N16–N17). A list
//! is recomputed when it may be emitted (nothing emitted yet, or `related_interval` has passed since)
//! and something it depends on changed since it was last computed, or it differed from the last
//! one emitted then. It is emitted when it differs from the last one emitted, and once more at the
//! end of a replay.
//!
//! Checkpoints write each `(article, partner)` count that changed and each article whose emitted
//! list changed (keyed by article, both), the views as worker 0 holds them (every worker holds the
//! same), and the inputs not processed yet as parts of their window.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};

use crate::checkpoint::parts::BucketParts;
use crate::checkpoint::{
    ChangeWriter, CheckpointError, Checkpointed, DeferredChanges, Entry, OperatorStates, Placement,
    StateSize, key_group,
};
use crate::features::{Feature, RelatedItem};
use crate::ids::{FastMap, FastSet};
use crate::intern::Article;
use crate::score::{related_order, related_score};

use super::held::{HeldCapability, emit_at, joint_frontier};
use super::pair_counts::CoocChange;
use super::window_stats::ArticleWindowStats;

/// The parameters of `related`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelatedSpec {
    /// `cooc_window`.
    pub window: u64,
    /// `cooc_slide`: lists are evaluated at its multiples.
    pub cooc_slide: u64,
    /// The dataflow's tick.
    pub slide: u64,
    /// List length.
    pub top_n: usize,
    /// `cooc_min_support`.
    pub min_support: u64,
    /// `related_interval`.
    pub interval: u64,
}

/// The broadcast side input of `related`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelatedSideInput {
    /// A change of an article's views in the co-occurrence window.
    Views(ArticleWindowStats),
    /// The event horizon: `tick(max ts) + slide` over every accepted event.
    Horizon(u64),
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ArticleRelated {
    /// Partners with `cooc ≥ min_support`: the only candidates for the list.
    partners: FastMap<Article, u32>,
    last_emitted: Vec<RelatedItem>,
    last_emitted_at: Option<u64>,
    /// Something the list depends on changed since it was last computed.
    stale: bool,
    /// The list last computed differs from the last one emitted (it was held back).
    differs: bool,
}

/// An article's emitted list in a checkpoint. Its partners are entries of their own, one per
/// pair (so that a checkpoint writes the pairs that changed, not every partner of an article
/// that gained one); `partners` here is empty, and read only from checkpoints of earlier builds.
#[derive(Serialize, Deserialize)]
struct SavedArticle {
    partners: Vec<(String, u32)>,
    last_emitted: Vec<RelatedItem>,
    last_emitted_at: Option<u64>,
}

/// An emitted list and when it was emitted.
type EmittedList = (Vec<RelatedItem>, Option<u64>);

/// What changed in the articles since the previous checkpoint, copied out of the state.
struct ArticleChanges {
    /// Articles whose emitted list changed (`None`: forgotten).
    lists: Vec<(Article, Option<EmittedList>)>,
    /// `(article, partner)` pairs as their counts changed, in order (`None`: no longer a
    /// partner); a pair may change more than once.
    partners: Vec<(Article, Article, Option<u32>)>,
}

impl DeferredChanges for ArticleChanges {
    fn write(self: Box<Self>, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        for (id, list) in &self.lists {
            let scope = Placement::of_route(id.route());
            let key = (ARTICLE_TAG, id.portal().name(), id.id());
            match list {
                Some((last_emitted, last_emitted_at)) => out.put(
                    scope,
                    &key,
                    &SavingArticle {
                        partners: Vec::new(),
                        last_emitted,
                        last_emitted_at: *last_emitted_at,
                    },
                )?,
                None => out.delete(scope, &key)?,
            }
        }
        // Each pair once, with its last count: sorted by pair, stably (later changes after
        // earlier ones), the last of each run of a pair kept.
        let mut partners = self.partners;
        partners.sort_by_key(|(id, partner, _)| (*id, *partner));
        let last_of_each = partners
            .iter()
            .enumerate()
            .filter(|(at, (id, partner, _))| {
                partners
                    .get(at + 1)
                    .is_none_or(|(next, next_partner, _)| (next, next_partner) != (id, partner))
            })
            .map(|(_, change)| change);
        for (id, partner, count) in last_of_each {
            let scope = Placement::of_route(id.route());
            let key = (PARTNER_TAG, id.portal().name(), id.id(), partner.id());
            match count {
                Some(count) => out.put(scope, &key, count)?,
                None => out.delete(scope, &key)?,
            }
        }
        Ok(())
    }
}

/// [`SavedArticle`] as written, borrowing the list (same encoding).
#[derive(Serialize)]
struct SavingArticle<'a> {
    partners: Vec<(&'a str, u32)>,
    last_emitted: &'a [RelatedItem],
    last_emitted_at: Option<u64>,
}

const ARTICLE_TAG: u8 = 0;
const VIEWS_TAG: u8 = 1;
const COOC_STASH_TAG: u8 = 2;
const VIEWS_STASH_TAG: u8 = 3;
const MARKS_TAG: u8 = 4;
const PARTNER_TAG: u8 = 5;

/// The related lists of the articles routed to one worker.
#[derive(Clone, Debug)]
pub struct RelatedState {
    spec: RelatedSpec,
    articles: FastMap<Article, ArticleRelated>,
    /// Views of every article (all workers') in the current co-occurrence window.
    views: FastMap<Article, u64>,
    cooc_stash: BTreeMap<u64, Vec<CoocChange>>,
    views_stash: BTreeMap<u64, Vec<ArticleWindowStats>>,
    /// The last window processed.
    processed_until: Option<u64>,
    /// `tick(max ts) + slide` over every accepted event.
    horizon: u64,
    // What the next checkpoint writes.
    /// Articles whose emitted list changed or that were forgotten.
    changed_articles: FastSet<Article>,
    /// `(article, partner, count)` as each pair's count changed (`None`: it stopped qualifying),
    /// in order; recorded as the change is applied, so that a checkpoint only hands the list on.
    changed_partners: Vec<(Article, Article, Option<u32>)>,
    /// Checkpoints are taken: `changed_partners` is kept (it grows until the next one).
    tracking: bool,
    changed_views: FastSet<Article>,
    cooc_stash_unsaved: BTreeMap<u64, usize>,
    views_stash_unsaved: BTreeMap<u64, usize>,
    cooc_stash_parts: BucketParts,
    views_stash_parts: BucketParts,
    saved_marks: Option<(Option<u64>, u64)>,
}

impl RelatedState {
    /// Empty state.
    pub fn new(spec: RelatedSpec) -> Self {
        RelatedState {
            spec,
            articles: FastMap::default(),
            views: FastMap::default(),
            cooc_stash: BTreeMap::new(),
            views_stash: BTreeMap::new(),
            processed_until: None,
            horizon: 0,
            changed_articles: FastSet::default(),
            changed_partners: Vec::new(),
            tracking: true,
            changed_views: FastSet::default(),
            cooc_stash_unsaved: BTreeMap::new(),
            views_stash_unsaved: BTreeMap::new(),
            cooc_stash_parts: BucketParts::new(COOC_STASH_TAG),
            views_stash_parts: BucketParts::new(VIEWS_STASH_TAG),
            saved_marks: None,
        }
    }

    /// Takes a change of an article's co-occurrence with a partner (for a window not final yet).
    pub fn insert_cooc(&mut self, change: CoocChange) {
        self.cooc_stash
            .entry(change.window_end)
            .or_default()
            .push(change);
        *self
            .cooc_stash_unsaved
            .entry(change.window_end)
            .or_default() += 1;
    }

    /// Applies a side input.
    pub fn insert_side(&mut self, side: RelatedSideInput) {
        match side {
            RelatedSideInput::Views(stats) => {
                self.views_stash
                    .entry(stats.window_end)
                    .or_default()
                    .push(stats);
                *self
                    .views_stash_unsaved
                    .entry(stats.window_end)
                    .or_default() += 1;
            }
            RelatedSideInput::Horizon(horizon) => self.horizon = self.horizon.max(horizon),
        }
    }

    /// Whether no state is left.
    pub fn is_idle(&self) -> bool {
        self.articles.is_empty()
            && self.cooc_stash.is_empty()
            && self.views_stash.is_empty()
            && self.views.is_empty()
    }

    /// The last final co-occurrence window at the end of a replay (`L_c`, N9), from the horizon.
    pub fn last_window(&self) -> u64 {
        if self.horizon == 0 {
            return 0; // no event yet
        }
        let cooc_slide = self.spec.cooc_slide;
        let last_tick = self.horizon.saturating_sub(self.spec.slide);
        last_tick - last_tick % cooc_slide + cooc_slide
    }

    fn next_window(&self) -> Option<u64> {
        let stashed = [
            self.cooc_stash.keys().next(),
            self.views_stash.keys().next(),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied();
        match self.processed_until {
            // Throttled lists may become due at any window: every window is visited while
            // there are lists.
            Some(last) if !self.articles.is_empty() => Some(last + self.spec.cooc_slide),
            _ => stashed,
        }
    }

    /// Processes every co-occurrence window `T ≤ limit`, in order.
    pub fn advance(&mut self, limit: u64, out: &mut Vec<Feature>) {
        while let Some(window_end) = self.next_window().filter(|next| *next <= limit) {
            self.process(window_end, out);
            self.processed_until = Some(window_end);
        }
    }

    /// The end of a replay: after the last window `L_c`, every list that differs from the one last
    /// emitted is emitted at `L_c`, whatever the interval (N17).
    pub fn finish(&mut self, out: &mut Vec<Feature>) {
        let last_window = self.last_window();
        self.advance(last_window, out);
        let start = last_window.saturating_sub(self.spec.window);
        let mut ids: Vec<Article> = self.articles.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let current = self.compute(id);
            if let Some(article) = self.articles.get(&id)
                && current != article.last_emitted
            {
                out.push(Feature::related(
                    id.portal().name(),
                    id.id(),
                    start,
                    last_window,
                    current,
                ));
            }
        }
        // Everything is out: the state is dropped (and deleted by the next checkpoint).
        self.changed_articles.extend(self.articles.keys().copied());
        if self.tracking {
            for (id, article) in &self.articles {
                self.changed_partners
                    .extend(article.partners.keys().map(|partner| (*id, *partner, None)));
            }
        }
        self.changed_views.extend(self.views.keys().copied());
        self.articles.clear();
        self.views.clear();
        self.cooc_stash.clear();
        self.views_stash.clear();
        self.cooc_stash_unsaved.clear();
        self.views_stash_unsaved.clear();
        self.cooc_stash_parts.drop_all();
        self.views_stash_parts.drop_all();
    }

    fn process(&mut self, window_end: u64, out: &mut Vec<Feature>) {
        let RelatedSpec {
            window,
            min_support,
            interval,
            ..
        } = self.spec;
        let mut views_changed: FastSet<Article> = FastSet::default();
        for stats in self.views_stash.remove(&window_end).unwrap_or_default() {
            if stats.views == 0 {
                self.views.remove(&stats.article);
            } else {
                self.views.insert(stats.article, stats.views);
            }
            views_changed.insert(stats.article);
            self.changed_views.insert(stats.article);
        }
        self.views_stash_unsaved.remove(&window_end);
        self.views_stash_parts.drop_bucket(window_end);
        for change in self.cooc_stash.remove(&window_end).unwrap_or_default() {
            let article = self.articles.entry(change.article).or_default();
            let count = if u64::from(change.cooc) >= min_support {
                article.partners.insert(change.partner, change.cooc);
                Some(change.cooc)
            } else {
                article.partners.remove(&change.partner);
                None
            };
            article.stale = true;
            if self.tracking {
                self.changed_partners
                    .push((change.article, change.partner, count));
            }
        }
        self.cooc_stash_unsaved.remove(&window_end);
        self.cooc_stash_parts.drop_bucket(window_end);

        let window_start = window_end.saturating_sub(window);
        let mut ids: Vec<Article> = self.articles.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(article) = self.articles.get_mut(&id) else {
                continue;
            };
            if views_changed.contains(&id)
                || article.partners.keys().any(|p| views_changed.contains(p))
            {
                article.stale = true;
            }
            let allowed = article
                .last_emitted_at
                .is_none_or(|at| window_end - at >= interval);
            if allowed && (article.stale || article.differs) {
                let current = self.compute(id);
                let Some(article) = self.articles.get_mut(&id) else {
                    continue;
                };
                article.stale = false;
                article.differs = false;
                if current != article.last_emitted {
                    out.push(Feature::related(
                        id.portal().name(),
                        id.id(),
                        window_start,
                        window_end,
                        current.clone(),
                    ));
                    article.last_emitted = current;
                    article.last_emitted_at = Some(window_end);
                    self.changed_articles.insert(id);
                }
            } else if article.stale {
                // Held back by the interval: computed (and emitted if it differs) when allowed.
                article.differs = true;
            }
            let Some(article) = self.articles.get(&id) else {
                continue;
            };
            // Nothing left to list or to take back; once its interval has passed, a new list
            // would be emitted at once anyway, so the article is forgotten.
            if article.partners.is_empty()
                && article.last_emitted.is_empty()
                && article
                    .last_emitted_at
                    .is_none_or(|at| window_end - at >= interval)
            {
                self.articles.remove(&id);
                self.changed_articles.insert(id);
            }
        }
    }

    /// `related(id)` as the current partners and views make it.
    fn compute(&self, id: Article) -> Vec<RelatedItem> {
        let Some(article) = self.articles.get(&id) else {
            return Vec::new();
        };
        let Some(&views_a) = self.views.get(&id) else {
            return Vec::new();
        };
        let mut partners: Vec<(Article, u64, u64)> = article
            .partners
            .iter()
            .filter_map(|(&partner, &cooc)| {
                let views = *self.views.get(&partner)?;
                Some((partner, u64::from(cooc), views))
            })
            .collect();
        partners.sort_unstable_by(|(x, cooc_x, views_x), (y, cooc_y, views_y)| {
            related_order(*cooc_x, *views_x, *cooc_y, *views_y).then_with(|| x.id().cmp(y.id()))
        });
        partners.truncate(self.spec.top_n);
        partners
            .into_iter()
            .map(|(partner, cooc, views_b)| RelatedItem {
                article_id: partner.id().to_string(),
                cooc,
                score: related_score(cooc, views_a, views_b),
            })
            .collect()
    }
}

/// Writes the stash records the checkpoint does not hold yet, as parts of their window.
fn save_stash<T: Serialize + Copy + Send + 'static>(
    out: &mut ChangeWriter<'_>,
    stash: &BTreeMap<u64, Vec<T>>,
    unsaved: &mut BTreeMap<u64, usize>,
    parts: &mut BucketParts,
) -> Result<(), CheckpointError> {
    parts.save_deletes(out)?;
    for (window_end, count) in std::mem::take(unsaved) {
        if let Some(records) = stash.get(&window_end) {
            let new = records[records.len().saturating_sub(count)..].to_vec();
            parts.write_later(out, window_end, new)?;
        }
    }
    Ok(())
}

/// Partner counts keyed by pair and emitted lists keyed by article; the views and their stash
/// written by worker 0 only (every worker
/// receives and holds the same); the co-occurrence stash as parts; the last window processed and
/// the horizon per worker and run.
impl Checkpointed for RelatedState {
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        // Copied out now, encoded once the dataflow has resumed: the pairs whose counts changed
        // (at a co-occurrence window, many) and the lists emitted since.
        let mut changed: Vec<Article> = self.changed_articles.drain().collect();
        changed.sort_unstable();
        let lists = changed
            .into_iter()
            .map(|id| {
                let list = self
                    .articles
                    .get(&id)
                    .map(|article| (article.last_emitted.clone(), article.last_emitted_at));
                (id, list)
            })
            .collect();
        let partners = std::mem::take(&mut self.changed_partners);
        out.defer(ArticleChanges { lists, partners })?;
        save_stash(
            out,
            &self.cooc_stash,
            &mut self.cooc_stash_unsaved,
            &mut self.cooc_stash_parts,
        )?;
        if out.worker() == 0 {
            let mut changed: Vec<Article> = self.changed_views.drain().collect();
            changed.sort_unstable();
            for id in changed {
                let key = (VIEWS_TAG, id.portal().name(), id.id());
                match self.views.get(&id) {
                    Some(views) => out.put(Placement::Broadcast, &key, views)?,
                    None => out.delete(Placement::Broadcast, &key)?,
                }
            }
            save_stash(
                out,
                &self.views_stash,
                &mut self.views_stash_unsaved,
                &mut self.views_stash_parts,
            )?;
        } else {
            self.changed_views.clear();
            self.views_stash_unsaved.clear();
        }
        let marks = (self.processed_until, self.horizon);
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
        if self.cooc_stash_parts.is_part(&entry) {
            let window_end = self.cooc_stash_parts.restored(&entry)?;
            let changes: Vec<CoocChange> = entry.value()?;
            let owned = changes
                .into_iter()
                .filter(|c| entry.owns(c.article.route()));
            self.cooc_stash.entry(window_end).or_default().extend(owned);
            return Ok(());
        }
        if self.views_stash_parts.is_part(&entry) {
            let window_end = self.views_stash_parts.restored(&entry)?;
            let stats: Vec<ArticleWindowStats> = entry.value()?;
            self.views_stash
                .entry(window_end)
                .or_default()
                .extend(stats);
            return Ok(());
        }
        match entry.key.first() {
            Some(&ARTICLE_TAG) => {
                let (_, portal, article): (u8, String, String) = entry.key()?;
                let saved: SavedArticle = entry.value()?;
                let id = Article::intern_names(&portal, &article);
                let portal = id.portal();
                let restored = self.articles.entry(id).or_default();
                for (partner, count) in &saved.partners {
                    // An earlier build's layout: written as pairs of their own from now on.
                    let partner = Article::intern(portal, partner);
                    restored.partners.insert(partner, *count);
                    self.changed_partners.push((id, partner, Some(*count)));
                }
                restored.last_emitted = saved.last_emitted;
                restored.last_emitted_at = saved.last_emitted_at;
                // Recomputed when next allowed: emitted again only if it differs.
                restored.stale = true;
            }
            Some(&PARTNER_TAG) => {
                let (_, portal, article, partner): (u8, String, String, String) = entry.key()?;
                let id = Article::intern_names(&portal, &article);
                let restored = self.articles.entry(id).or_default();
                restored
                    .partners
                    .insert(Article::intern(id.portal(), &partner), entry.value()?);
                restored.stale = true;
            }
            Some(&VIEWS_TAG) => {
                let (_, portal, article): (u8, String, String) = entry.key()?;
                self.views
                    .insert(Article::intern_names(&portal, &article), entry.value()?);
            }
            _ => {
                let (processed_until, horizon): (Option<u64>, u64) = entry.value()?;
                self.processed_until = self.processed_until.max(processed_until);
                self.horizon = self.horizon.max(horizon);
            }
        }
        Ok(())
    }

    fn finish_restore(&mut self) -> Result<(), CheckpointError> {
        self.saved_marks = Some((self.processed_until, self.horizon));
        Ok(())
    }

    fn track_changes(&mut self, on: bool) {
        self.tracking = on;
        if !on {
            self.changed_partners = Vec::new();
        }
    }

    fn size(&self) -> StateSize {
        let partners: usize = self.articles.values().map(|a| a.partners.capacity()).sum();
        let emitted: usize = self
            .articles
            .values()
            .map(|a| a.last_emitted.capacity() * (std::mem::size_of::<RelatedItem>() + 32))
            .sum();
        let stash: usize = self.cooc_stash.values().map(Vec::capacity).sum::<usize>()
            * std::mem::size_of::<CoocChange>()
            + self.views_stash.values().map(Vec::capacity).sum::<usize>()
                * std::mem::size_of::<ArticleWindowStats>();
        StateSize {
            bytes: (self.articles.capacity()
                * (std::mem::size_of::<(Article, ArticleRelated)>() + 1)
                + partners * 13
                + emitted
                + self.views.capacity() * 17
                + self.changed_partners.capacity()
                    * std::mem::size_of::<(Article, Article, Option<u32>)>()
                + stash) as u64,
            entries: self.articles.len() as u64,
        }
    }
}

/// Maintains related lists from co-occurrence changes and view counts.
pub trait Related<'scope> {
    /// `related` features at time `window_end − slide`.
    fn related(
        self,
        views: StreamVec<'scope, u64, ArticleWindowStats>,
        horizon: StreamVec<'scope, u64, u64>,
        spec: RelatedSpec,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Feature>;
}

impl<'scope> Related<'scope> for StreamVec<'scope, u64, CoocChange> {
    fn related(
        self,
        views: StreamVec<'scope, u64, ArticleWindowStats>,
        horizon: StreamVec<'scope, u64, u64>,
        spec: RelatedSpec,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Feature> {
        let state = states.attach("related", RelatedState::new(spec));
        let side = views
            .broadcast()
            .map(RelatedSideInput::Views)
            .concat(horizon.map(RelatedSideInput::Horizon));
        let route =
            Exchange::new(|change: &CoocChange| u64::from(key_group(change.article.route())));
        self.binary_frontier(
            side,
            route,
            Pipeline,
            "Related",
            move |capability, _info| {
                let mut held = HeldCapability::default();
                if !state.borrow().is_idle() {
                    held.hold_initial(capability);
                }
                let mut out = Vec::new();
                let mut timed: Vec<(u64, Feature)> = Vec::new();
                move |(changes, changes_frontier), (side, side_frontier), output| {
                    let mut state = state.borrow_mut();
                    changes.for_each(|cap, data| {
                        held.hold(&cap);
                        for change in data.drain(..) {
                            state.insert_cooc(change);
                        }
                    });
                    side.for_each(|cap, data| {
                        held.hold(&cap);
                        for input in data.drain(..) {
                            state.insert_side(input);
                        }
                    });
                    let frontier = joint_frontier(changes_frontier, side_frontier);
                    match frontier {
                        // At the end of input, upstream flushes reach past the last event's window at
                        // finite times; those windows are never final (N9). Live, the frontier never
                        // passes the horizon, since the watermark trails the newest event.
                        Some(limit) => {
                            let limit = limit.min(state.last_window());
                            state.advance(limit, &mut out);
                        }
                        None => state.finish(&mut out),
                    }
                    timed.extend(
                        out.drain(..)
                            .map(|f| (f.final_ts().saturating_sub(spec.slide), f)),
                    );
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

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 60_000;

    fn spec(interval: u64) -> RelatedSpec {
        RelatedSpec {
            window: 60 * M,
            cooc_slide: 10 * M,
            slide: M,
            top_n: 5,
            min_support: 2,
            interval,
        }
    }

    fn views(id: &str, window_end: u64, views: u64) -> RelatedSideInput {
        RelatedSideInput::Views(ArticleWindowStats {
            article: Article::intern_names("g1", id),
            window_end,
            views,
            engaged_views: 0,
            older_views: views,
            recent_users: 0,
            recent_engaged_users: 0,
            provisional: false,
        })
    }

    fn cooc(a: &str, b: &str, window_end: u64, cooc: u32) -> [CoocChange; 2] {
        let (a, b) = (
            Article::intern_names("g1", a),
            Article::intern_names("g1", b),
        );
        [
            CoocChange {
                article: a,
                partner: b,
                window_end,
                cooc,
            },
            CoocChange {
                article: b,
                partner: a,
                window_end,
                cooc,
            },
        ]
    }

    #[test]
    fn exact_ties_fall_to_article_id_and_lists_are_throttled() {
        let mut state = RelatedState::new(spec(20 * M));
        // a: 8 views; b: cooc 2 with 4 views; c: cooc 7 with 49 views — exactly equal scores.
        for side in [
            views("a", 10 * M, 8),
            views("b", 10 * M, 4),
            views("c", 10 * M, 49),
        ] {
            state.insert_side(side);
        }
        for change in cooc("a", "c", 10 * M, 7)
            .into_iter()
            .chain(cooc("a", "b", 10 * M, 2))
        {
            state.insert_cooc(change);
        }
        state.insert_side(RelatedSideInput::Horizon(60 * M));
        let mut out = Vec::new();
        state.advance(10 * M, &mut out);
        let list = |feature: &Feature| match feature {
            Feature::Related(list) => (
                list.article_id.clone(),
                list.window_end,
                list.items
                    .iter()
                    .map(|i| i.article_id.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => panic!("not related"),
        };
        let a = out.iter().map(list).find(|(id, ..)| id == "a");
        assert_eq!(a, Some(("a".into(), 10 * M, vec!["b".into(), "c".into()])));
        // b's support drops at 20 min: a's list changes but is held back until 30 min.
        out.clear();
        for change in cooc("a", "b", 20 * M, 1) {
            state.insert_cooc(change);
        }
        state.advance(20 * M, &mut out);
        assert!(!out.iter().any(|f| list(f).0 == "a"), "throttled at 20 min");
        state.advance(30 * M, &mut out);
        let a = out.iter().map(list).find(|(id, ..)| id == "a");
        assert_eq!(a, Some(("a".into(), 30 * M, vec!["c".into()])));
    }
}
