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

use crate::checkpoint::entries::{Entry, EntryWriter};
use crate::checkpoint::{CheckpointError, Checkpointed, OperatorStates};
use crate::event::Id;
use crate::features::{Feature, RelatedItem};
use crate::ids::{FastMap, FastSet};
use crate::score::related_score;

use super::cooccurrence::ArticlePair;
use super::held::{HeldCapability, joint_frontier};
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
    pub portal: Id,
    /// The article whose list this counts towards.
    pub article_id: Id,
    /// The partner.
    pub partner: Id,
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PairWindow {
    count: u64,
    /// `(tick, count)` of buckets not entered yet; a handful at most, so a vector beats a map.
    pending: Vec<(u64, u64)>,
    entered: VecDeque<(u64, u64)>,
}

/// A worker's article keys as small integers, so that per-window work hashes and copies `u32`s.
#[derive(Clone, Debug, Default)]
struct ArticleIds {
    /// portal → article → id (nested so that lookups by `&str` allocate nothing).
    ids: FastMap<String, FastMap<String, u32>>,
    keys: Vec<ArticleKey>,
}

impl ArticleIds {
    fn intern(&mut self, portal: &str, article: &str) -> u32 {
        if let Some(&id) = self
            .ids
            .get(portal)
            .and_then(|articles| articles.get(article))
        {
            return id;
        }
        let id = self.keys.len() as u32;
        self.keys.push((Id::from(portal), Id::from(article)));
        self.ids
            .entry(portal.to_string())
            .or_default()
            .insert(article.to_string(), id);
        id
    }

    fn key(&self, id: u32) -> &ArticleKey {
        &self.keys[id as usize]
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ArticleRelated {
    partners: FastMap<u32, PairWindow>,
    /// Partners with `cooc ≥ min_support`: the only candidates for the list.
    qualified: FastSet<u32>,
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
    ids: ArticleIds,
    articles: FastMap<u32, ArticleRelated>,
    /// Window end → `(article, partner)` pairs whose bucket enters or leaves then.
    visits: BTreeMap<u64, Vec<(u32, u32)>>,
    /// Window end → articles whose throttled list may be emitted then.
    wakeups: BTreeMap<u64, Vec<u32>>,
    /// Views of every article (all workers') in the current window.
    views: FastMap<u32, u64>,
    views_stash: BTreeMap<u64, Vec<ArticleWindowStats>>,
    /// Partner `b` → local articles `a` for which `b` is qualified.
    qualified_by_partner: FastMap<u32, FastSet<u32>>,
    /// The last window processed.
    processed_until: Option<u64>,
    horizon: u64,
}

impl RelatedState {
    /// Empty state.
    pub fn new(spec: RelatedSpec) -> Self {
        RelatedState {
            spec,
            ids: ArticleIds::default(),
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
        let article_id = self.ids.intern(&pair.portal, &pair.article_id);
        let partner_id = self.ids.intern(&pair.portal, &pair.partner);
        let article = self.articles.entry(article_id).or_default();
        let pending = &mut article.partners.entry(partner_id).or_default().pending;
        let new_bucket = match pending.iter_mut().find(|(bucket, _)| *bucket == tick) {
            Some((_, count)) => {
                *count += 1;
                false
            }
            None => {
                pending.push((tick, 1));
                true
            }
        };
        if new_bucket {
            let enter = tick + slide;
            for time in [enter, enter + window] {
                self.visits
                    .entry(time)
                    .or_default()
                    .push((article_id, partner_id));
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
        for (&id, article) in &self.articles {
            // A throttled list may have changed since it was last computed.
            let current = if article.stale {
                self.compute(id)
            } else {
                article.current.clone()
            };
            if current != article.last_emitted {
                let (portal, article_id) = self.ids.key(id);
                out.push(Feature::related(
                    portal,
                    article_id,
                    start,
                    last_window,
                    current,
                ));
            }
        }
        *self = RelatedState {
            horizon: self.horizon,
            ..RelatedState::new(self.spec)
        };
    }

    fn process(&mut self, window_end: u64, out: &mut Vec<Feature>) {
        let RelatedSpec {
            window,
            slide,
            min_support,
            interval,
            ..
        } = self.spec;
        let mut dirty: Vec<u32> = Vec::new();

        for stats in self.views_stash.remove(&window_end).unwrap_or_default() {
            let id = self.ids.intern(&stats.portal, &stats.article_id);
            if stats.views == 0 {
                self.views.remove(&id);
            } else {
                self.views.insert(id, stats.views);
            }
            if let Some(articles) = self.qualified_by_partner.get(&id) {
                dirty.extend(articles.iter().copied());
            }
            if self.articles.contains_key(&id) {
                dirty.push(id);
            }
        }

        let window_start = window_end.saturating_sub(window);
        for (id, partner) in self.visits.remove(&window_end).unwrap_or_default() {
            let Some(article) = self.articles.get_mut(&id) else {
                continue;
            };
            let Some(pair) = article.partners.get_mut(&partner) else {
                continue;
            };
            let was_qualified = pair.count >= min_support;
            let entering = window_end - slide;
            if let Some(position) = pair.pending.iter().position(|(tick, _)| *tick == entering) {
                let (_, count) = pair.pending.swap_remove(position);
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
            if qualified && !was_qualified {
                article.qualified.insert(partner);
                self.qualified_by_partner
                    .entry(partner)
                    .or_default()
                    .insert(id);
            } else if was_qualified && !qualified {
                article.qualified.remove(&partner);
                if let Some(set) = self.qualified_by_partner.get_mut(&partner) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.qualified_by_partner.remove(&partner);
                    }
                }
            }
            dirty.push(id);
        }

        dirty.extend(self.wakeups.remove(&window_end).unwrap_or_default());
        dirty.sort_unstable();
        dirty.dedup();

        for id in dirty {
            let Some(article) = self.articles.get_mut(&id) else {
                continue;
            };
            if article.wakeup.is_some_and(|due| window_end < due) {
                // Already differs and throttled: only its value at the wake-up matters (N17).
                article.stale = true;
                continue;
            }
            article.wakeup = None;
            let current = self.compute(id);
            let Some(article) = self.articles.get_mut(&id) else {
                continue;
            };
            article.current = current;
            article.stale = false;
            if article.current != article.last_emitted {
                let due = article
                    .last_emitted_at
                    .map_or(window_end, |at| at + interval);
                if window_end >= due {
                    let (portal, article_id) = self.ids.key(id);
                    out.push(Feature::related(
                        portal,
                        article_id,
                        window_start,
                        window_end,
                        article.current.clone(),
                    ));
                    article.last_emitted = article.current.clone();
                    article.last_emitted_at = Some(window_end);
                } else {
                    article.wakeup = Some(due);
                    self.wakeups.entry(due).or_default().push(id);
                }
            }
            if article.partners.is_empty()
                && article.current.is_empty()
                && article.last_emitted.is_empty()
            {
                self.articles.remove(&id);
            }
        }
    }

    fn compute(&self, id: u32) -> Vec<RelatedItem> {
        let RelatedSpec { top_n, .. } = self.spec;
        let Some(article) = self.articles.get(&id) else {
            return Vec::new();
        };
        let Some(&views_a) = self.views.get(&id) else {
            return Vec::new();
        };
        let mut items: Vec<RelatedItem> = article
            .qualified
            .iter()
            .filter_map(|partner| {
                let views_b = *self.views.get(partner)?;
                let cooc = article.partners.get(partner)?.count;
                Some(RelatedItem {
                    article_id: self.ids.key(*partner).1.to_string(),
                    cooc,
                    score: related_score(cooc, views_a, views_b),
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

/// An article's related state in a checkpoint, with its scheduled visits and wake-ups. Partners
/// (always of the article's portal) are named once, in `partner_ids`, and referred to by index:
/// this worker's interned ids mean nothing to another run.
#[derive(Serialize, Deserialize)]
struct SavedArticle {
    key: ArticleKey,
    partner_ids: Vec<Id>,
    partners: Vec<(u32, PairWindow)>,
    qualified: Vec<u32>,
    current: Vec<RelatedItem>,
    stale: bool,
    last_emitted: Vec<RelatedItem>,
    last_emitted_at: Option<u64>,
    wakeup: Option<u64>,
    visits: Vec<(u64, u32)>,
    wakeups: Vec<u64>,
}

/// [`SavedArticle`] as written: borrowed, so saving copies no window (same encoding).
#[derive(Serialize)]
struct SavingArticle<'a> {
    key: &'a ArticleKey,
    partner_ids: Vec<Id>,
    partners: Vec<(u32, &'a PairWindow)>,
    qualified: Vec<u32>,
    current: &'a [RelatedItem],
    stale: bool,
    last_emitted: &'a [RelatedItem],
    last_emitted_at: Option<u64>,
    wakeup: Option<u64>,
    visits: Vec<(u64, u32)>,
    wakeups: Vec<u64>,
}

/// Numbers the partners of one saved article.
#[derive(Default)]
struct PartnerTable {
    index: FastMap<u32, u32>,
    ids: Vec<Id>,
}

impl PartnerTable {
    fn index(&mut self, ids: &ArticleIds, partner: u32) -> u32 {
        *self.index.entry(partner).or_insert_with(|| {
            self.ids.push(ids.key(partner).1.clone());
            (self.ids.len() - 1) as u32
        })
    }
}

/// What every worker holds alike: the views received by broadcast, and how far it got.
#[derive(Serialize, Deserialize)]
struct SavedShared {
    views: Vec<(ArticleKey, u64)>,
    views_stash: BTreeMap<u64, Vec<ArticleWindowStats>>,
    processed_until: Option<u64>,
    horizon: u64,
}

/// One entry per article (routed like its pairs) and a shared entry with the views. Every worker
/// saved the same views (they arrive by broadcast, and a checkpoint is taken when every worker has
/// acted on the same frontier), so merging keeps the first copy of each window's views.
impl Checkpointed for RelatedState {
    fn save(&self, out: &mut EntryWriter) -> Result<(), CheckpointError> {
        let mut visits: FastMap<u32, Vec<(u64, u32)>> = FastMap::default();
        for (time, pairs) in &self.visits {
            for &(article, partner) in pairs {
                visits.entry(article).or_default().push((*time, partner));
            }
        }
        let mut wakeups: FastMap<u32, Vec<u64>> = FastMap::default();
        for (time, ids) in &self.wakeups {
            for &id in ids {
                wakeups.entry(id).or_default().push(*time);
            }
        }
        for (&id, article) in &self.articles {
            let mut table = PartnerTable::default();
            let partners = article
                .partners
                .iter()
                .map(|(&partner, window)| (table.index(&self.ids, partner), window))
                .collect();
            let qualified = article
                .qualified
                .iter()
                .map(|&partner| table.index(&self.ids, partner))
                .collect();
            let visits = visits
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .map(|(time, partner)| (time, table.index(&self.ids, partner)))
                .collect();
            let saved = SavingArticle {
                key: self.ids.key(id),
                partner_ids: table.ids,
                partners,
                qualified,
                current: &article.current,
                stale: article.stale,
                last_emitted: &article.last_emitted,
                last_emitted_at: article.last_emitted_at,
                wakeup: article.wakeup,
                visits,
                wakeups: wakeups.remove(&id).unwrap_or_default(),
            };
            out.keyed(article_route(&saved.key.0, &saved.key.1), &saved)?;
        }
        out.shared(&SavedShared {
            views: self
                .views
                .iter()
                .map(|(&id, &views)| (self.ids.key(id).clone(), views))
                .collect(),
            views_stash: self.views_stash.clone(),
            processed_until: self.processed_until,
            horizon: self.horizon,
        })
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        if entry.route.is_none() {
            let shared: SavedShared = entry.decode()?;
            for ((portal, article), views) in shared.views {
                let id = self.ids.intern(&portal, &article);
                self.views.insert(id, views);
            }
            for (window_end, stats) in shared.views_stash {
                self.views_stash.entry(window_end).or_insert(stats);
            }
            self.processed_until = self.processed_until.max(shared.processed_until);
            self.horizon = self.horizon.max(shared.horizon);
            return Ok(());
        }
        let saved: SavedArticle = entry.decode()?;
        let portal = &saved.key.0;
        let id = self.ids.intern(portal, &saved.key.1);
        let interned: Vec<u32> = saved
            .partner_ids
            .iter()
            .map(|partner| self.ids.intern(portal, partner))
            .collect();
        let partner = |index: u32| {
            interned.get(index as usize).copied().ok_or_else(|| {
                CheckpointError::Decode(format!(
                    "related state of {}/{} names partner {index} of {}",
                    portal,
                    saved.key.1,
                    interned.len()
                ))
            })
        };
        let partners = saved
            .partners
            .iter()
            .map(|(index, window)| Ok((partner(*index)?, window.clone())))
            .collect::<Result<_, CheckpointError>>()?;
        let qualified: FastSet<u32> = saved
            .qualified
            .iter()
            .map(|index| partner(*index))
            .collect::<Result<_, _>>()?;
        let visits: Vec<(u64, u32)> = saved
            .visits
            .iter()
            .map(|(time, index)| Ok((*time, partner(*index)?)))
            .collect::<Result<_, CheckpointError>>()?;
        for &partner in &qualified {
            self.qualified_by_partner
                .entry(partner)
                .or_default()
                .insert(id);
        }
        for (time, partner) in visits {
            self.visits.entry(time).or_default().push((id, partner));
        }
        for time in saved.wakeups {
            self.wakeups.entry(time).or_default().push(id);
        }
        self.articles.insert(
            id,
            ArticleRelated {
                partners,
                qualified,
                current: saved.current,
                stale: saved.stale,
                last_emitted: saved.last_emitted,
                last_emitted_at: saved.last_emitted_at,
                wakeup: saved.wakeup,
            },
        );
        Ok(())
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
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Feature>;
}

impl<'scope> Related<'scope> for StreamVec<'scope, u64, ArticlePair> {
    fn related(
        self,
        views: StreamVec<'scope, u64, ArticleWindowStats>,
        horizon: StreamVec<'scope, u64, u64>,
        spec: RelatedSpec,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Feature> {
        let state = states.attach("related", RelatedState::new(spec));
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
            move |capability, _info| {
                let mut held = HeldCapability::default();
                if !state.borrow().is_idle() {
                    held.hold_initial(capability);
                }
                let mut out = Vec::new();
                move |(pairs, pairs_frontier), (side, side_frontier), output| {
                    let mut state = state.borrow_mut();
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
                    let frontier = joint_frontier(pairs_frontier, side_frontier);
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
