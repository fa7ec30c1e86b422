//! The live state the HTTP side serves: the latest rankings and related lists the dataflow pushed.
//!
//! The dataflow calls [`ServingState::apply`] with every [`LiveUpdate`]; request handlers read. No
//! request recomputes anything: each stored value is an immutable `Arc` snapshot, built before any
//! lock is taken, so a writer holds a lock only to swap one pointer and a reader only to clone one.
//! Each map sits behind its own `std::sync::RwLock` (no `arc-swap`).
//!
//! Per `(portal, kind)` two rankings are kept:
//! - the last **final** one (its window is complete: the watermark has passed its end), and
//! - the latest **provisional** one (the window still filling, a live preview).
//!
//! [`ServingState::ranking`] answers with the provisional one when its window ends later than the
//! final one's, else with the final one, and says which. Updates that arrive out of order (an older
//! window than the one held) are ignored, so the answer never goes back in time.
//!
//! Related lists are kept per `(portal, article)`, the latest window wins. They are always final
//! (computed on final windows); their `watermark` is their `window_end`, the event time they are
//! complete up to (a list is only re-emitted when it changes, so later windows may not be reflected).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use pageflow_dataflow::checkpoint::{ChangeWriter, CheckpointError, Placement};
use pageflow_dataflow::features::{RankedItem, RankingKind, RelatedItem};
use pageflow_dataflow::live::LiveUpdate;
use serde::{Deserialize, Serialize};

use crate::recent_reads::{RecentReads, RecentReadsLimits};

/// One ranking of one portal, as pushed by the dataflow.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranking {
    /// Popular or trending.
    pub kind: RankingKind,
    /// The site.
    pub portal: String,
    /// Inclusive start of the window (`window_end − trending_window`).
    pub window_start: u64,
    /// Exclusive end of the window.
    pub window_end: u64,
    /// The ranking is complete up to this event time.
    pub watermark: u64,
    /// Whether the window is final.
    pub is_final: bool,
    /// Best first.
    pub items: Vec<RankedItem>,
}

/// The related list of one article, as pushed by the dataflow (always final).
#[derive(Clone, Debug, PartialEq)]
pub struct Related {
    /// The site.
    pub portal: String,
    /// The article whose partners are listed.
    pub article_id: String,
    /// Exclusive end of the co-occurrence window the list was computed on.
    pub window_end: u64,
    /// Best first; empty when the article no longer has related articles.
    pub items: Vec<RelatedItem>,
}

impl Related {
    /// The event time the list is complete up to: its `window_end`.
    pub fn watermark(&self) -> u64 {
        self.window_end
    }
}

/// The final and provisional rankings of one `(portal, kind)`.
#[derive(Clone, Debug, Default)]
struct RankingSlot {
    final_: Option<Arc<Ranking>>,
    provisional: Option<Arc<Ranking>>,
}

impl RankingSlot {
    /// The ranking to serve: the provisional one if its window ends later, else the final one.
    fn current(&self) -> Option<Arc<Ranking>> {
        match (&self.final_, &self.provisional) {
            (Some(f), Some(p)) if p.window_end > f.window_end => Some(Arc::clone(p)),
            (Some(f), _) => Some(Arc::clone(f)),
            (None, Some(p)) => Some(Arc::clone(p)),
            (None, None) => None,
        }
    }

    /// Stores `ranking` unless it is older than what is held.
    fn store(&mut self, ranking: Arc<Ranking>) {
        if ranking.is_final {
            if self
                .final_
                .as_ref()
                .is_some_and(|f| f.window_end > ranking.window_end)
            {
                return;
            }
            // A provisional ranking of a window that is now final (or older) is obsolete.
            if self
                .provisional
                .as_ref()
                .is_some_and(|p| p.window_end <= ranking.window_end)
            {
                self.provisional = None;
            }
            self.final_ = Some(ranking);
        } else {
            if self
                .final_
                .as_ref()
                .is_some_and(|f| f.window_end >= ranking.window_end)
            {
                return;
            }
            if self.provisional.as_ref().is_some_and(|p| {
                (p.window_end, p.watermark) > (ranking.window_end, ranking.watermark)
            }) {
                return;
            }
            self.provisional = Some(ranking);
        }
    }
}

/// The latest live rankings and related lists; shared as `Arc<ServingState>` between the dataflow
/// (writer) and the HTTP handlers (readers).
/// The operator name under which checkpoints hold the serving state.
pub const SERVING_STATE: &str = "serving";

/// The keys of the serving state in checkpoints; values are [`LiveUpdate`]s that rebuild it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum ServingKey {
    Ranking {
        portal: String,
        kind: RankingKind,
        is_final: bool,
    },
    Related {
        portal: String,
        article_id: String,
    },
    Reads {
        portal: String,
        user_id: String,
    },
}

fn ranking_update(ranking: &Ranking) -> LiveUpdate {
    LiveUpdate::Ranking {
        kind: ranking.kind,
        portal: ranking.portal.clone(),
        window_start: ranking.window_start,
        window_end: ranking.window_end,
        watermark: ranking.watermark,
        is_final: ranking.is_final,
        items: ranking.items.clone(),
    }
}

#[derive(Debug)]
pub struct ServingState {
    /// Bumped after every stored ranking: change streams wait on it (see
    /// [`ServingState::subscribe`]), then read the rankings they follow.
    ranking_changes: tokio::sync::watch::Sender<u64>,
    rankings: RwLock<HashMap<(String, RankingKind), RankingSlot>>,
    /// portal → article → latest related list.
    related: RwLock<HashMap<String, HashMap<String, Arc<Related>>>>,
    /// `(portal, article)` whose related list changed since the last checkpoint.
    related_changed: std::sync::Mutex<BTreeSet<(String, String)>>,
    /// Each reader's recent articles (for recommendations).
    reads: RecentReads,
    /// The job has restored its state (if any) and built its dataflow: `/readyz` may say yes.
    loaded: std::sync::atomic::AtomicBool,
    /// The server is shutting down: change streams end (see [`ServingState::close`]).
    closed: std::sync::atomic::AtomicBool,
}

impl Default for ServingState {
    fn default() -> Self {
        ServingState::with_read_limits(RecentReadsLimits::default())
    }
}

impl ServingState {
    /// An empty state keeping readers' recent articles within `limits`.
    pub fn with_read_limits(limits: RecentReadsLimits) -> Self {
        ServingState {
            ranking_changes: tokio::sync::watch::Sender::new(0),
            rankings: RwLock::default(),
            related: RwLock::default(),
            related_changed: std::sync::Mutex::default(),
            reads: RecentReads::new(limits),
            loaded: std::sync::atomic::AtomicBool::default(),
            closed: std::sync::atomic::AtomicBool::default(),
        }
    }

    /// Ends every change stream (they check [`ServingState::is_closed`] when woken): a graceful
    /// HTTP shutdown waits for open responses, and a stream would otherwise never end.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.ranking_changes.send_modify(|count| *count += 1);
    }

    /// Whether [`ServingState::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Each reader's recent articles.
    pub fn recent_reads(&self) -> &RecentReads {
        &self.reads
    }

    /// A receiver that sees a new value after every change to any ranking: a change stream waits
    /// on it (`changed().await`) and then reads [`ServingState::ranking`]. Values are a counter;
    /// only the fact that it moved matters (a burst of updates may be seen as one change).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ranking_changes.subscribe()
    }

    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the state as loaded: restored from the checkpoint, if any, and the dataflow running.
    pub fn mark_loaded(&self) {
        self.loaded.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`ServingState::mark_loaded`] was called.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes in one update from the dataflow. Out-of-order updates (an older window than the one
    /// held) are ignored.
    pub fn apply(&self, update: LiveUpdate) {
        match update {
            LiveUpdate::Ranking {
                kind,
                portal,
                window_start,
                window_end,
                watermark,
                is_final,
                items,
            } => {
                let ranking = Arc::new(Ranking {
                    kind,
                    window_start,
                    portal,
                    window_end,
                    watermark,
                    is_final,
                    items,
                });
                let key = (ranking.portal.clone(), kind);
                write(&self.rankings).entry(key).or_default().store(ranking);
                self.ranking_changes.send_modify(|count| *count += 1);
            }
            LiveUpdate::Related {
                portal,
                article_id,
                window_end,
                items,
            } => {
                let related = Arc::new(Related {
                    portal,
                    article_id,
                    window_end,
                    items,
                });
                let key = (related.portal.clone(), related.article_id.clone());
                let mut map = write(&self.related);
                let articles = map.entry(related.portal.clone()).or_default();
                match articles.get_mut(&related.article_id) {
                    Some(held) if held.window_end > related.window_end => return,
                    Some(held) => *held = related,
                    None => {
                        articles.insert(related.article_id.clone(), related);
                    }
                }
                drop(map);
                self.related_changed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key);
            }
            reads @ LiveUpdate::Reads { .. } => self.reads.apply(&reads),
        }
    }

    /// Everything held, as the updates that rebuild it with [`ServingState::apply`]: saved in
    /// checkpoints, so a restarted job serves at once what it served before.
    pub fn export(&self) -> Vec<LiveUpdate> {
        let mut updates = Vec::new();
        for slot in read(&self.rankings).values() {
            updates.extend(slot.final_.as_deref().map(ranking_update));
            updates.extend(slot.provisional.as_deref().map(ranking_update));
        }
        for articles in read(&self.related).values() {
            updates.extend(articles.values().map(|related| LiveUpdate::Related {
                portal: related.portal.clone(),
                article_id: related.article_id.clone(),
                window_end: related.window_end,
                items: related.items.clone(),
            }));
        }
        updates.extend(self.reads.export());
        updates
    }

    /// Writes what changed since the previous call for an incremental checkpoint (under the
    /// operator name [`SERVING_STATE`], broadcast): every ranking (a few per portal), the related
    /// lists that changed, and the readers whose recent reads changed or who were forgotten.
    pub fn save_changes(&self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        for ((portal, kind), slot) in read(&self.rankings).iter() {
            for ranking in [&slot.final_, &slot.provisional].into_iter().flatten() {
                let key = ServingKey::Ranking {
                    portal: portal.clone(),
                    kind: *kind,
                    is_final: ranking.is_final,
                };
                out.put(Placement::Broadcast, &key, &ranking_update(ranking))?;
            }
        }
        let changed = std::mem::take(
            &mut *self
                .related_changed
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        {
            let related = read(&self.related);
            for (portal, article_id) in changed {
                let held = related.get(&portal).and_then(|a| a.get(&article_id));
                let key = ServingKey::Related {
                    portal: portal.clone(),
                    article_id: article_id.clone(),
                };
                match held {
                    Some(list) => out.put(
                        Placement::Broadcast,
                        &key,
                        &LiveUpdate::Related {
                            portal,
                            article_id,
                            window_end: list.window_end,
                            items: list.items.clone(),
                        },
                    )?,
                    None => out.delete(Placement::Broadcast, &key)?,
                }
            }
        }
        for (portal, user_id, reads) in self.reads.take_changes() {
            let key = ServingKey::Reads {
                portal: portal.clone(),
                user_id: user_id.clone(),
            };
            match reads {
                Some(reads) => out.put(
                    Placement::Broadcast,
                    &key,
                    &LiveUpdate::Reads {
                        portal,
                        user_id,
                        reads,
                    },
                )?,
                None => out.delete(Placement::Broadcast, &key)?,
            }
        }
        Ok(())
    }

    /// Forgets what changed: the state now equals what the checkpoint holds (after a restore).
    pub fn mark_saved(&self) {
        self.related_changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.reads.mark_saved();
    }

    /// The ranking to serve for `(portal, kind)`: the latest provisional one when its window ends
    /// after the last final one, else the last final one. `None` before any was pushed.
    pub fn ranking(&self, portal: &str, kind: RankingKind) -> Option<Arc<Ranking>> {
        // The key is owned; building it costs one small allocation per request, outside the lock.
        let key = (portal.to_string(), kind);
        read(&self.rankings)
            .get(&key)
            .and_then(RankingSlot::current)
    }

    /// The last final ranking of `(portal, kind)`, if any.
    pub fn final_ranking(&self, portal: &str, kind: RankingKind) -> Option<Arc<Ranking>> {
        let key = (portal.to_string(), kind);
        read(&self.rankings)
            .get(&key)
            .and_then(|slot| slot.final_.clone())
    }

    /// The latest related list of `article_id` in `portal`, if any was pushed.
    pub fn related(&self, portal: &str, article_id: &str) -> Option<Arc<Related>> {
        read(&self.related)
            .get(portal)
            .and_then(|articles| articles.get(article_id))
            .cloned()
    }

    /// Whether anything (a ranking or a related list) was pushed for `portal`.
    pub fn knows_portal(&self, portal: &str) -> bool {
        if read(&self.related).contains_key(portal) {
            return true;
        }
        read(&self.rankings)
            .keys()
            .any(|(p, _)| p.as_str() == portal)
    }

    /// The portals with at least one ranking, sorted.
    pub fn portals(&self) -> Vec<String> {
        let set: BTreeSet<String> = read(&self.rankings)
            .keys()
            .map(|(portal, _)| portal.clone())
            .collect();
        set.into_iter().collect()
    }
}

/// A read guard; a panic in another holder does not leave the maps inconsistent (every write is a
/// single insert), so a poisoned lock is used as is.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// A write guard, see [`read`].
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ranking update with one item per article id, scores descending.
    pub(crate) fn ranking(
        kind: RankingKind,
        portal: &str,
        window_end: u64,
        watermark: u64,
        is_final: bool,
        articles: &[&str],
    ) -> LiveUpdate {
        let n = articles.len() as u64;
        LiveUpdate::Ranking {
            kind,
            portal: portal.to_string(),
            window_start: window_end.saturating_sub(60 * 60_000),
            window_end,
            watermark,
            is_final,
            items: articles
                .iter()
                .enumerate()
                .map(|(i, a)| RankedItem {
                    article_id: (*a).to_string(),
                    views: n - i as u64,
                    engaged_views: 0,
                    score: (n - i as u64) as f64,
                })
                .collect(),
        }
    }

    /// A related update.
    pub(crate) fn related(
        portal: &str,
        article_id: &str,
        window_end: u64,
        partners: &[&str],
    ) -> LiveUpdate {
        LiveUpdate::Related {
            portal: portal.to_string(),
            article_id: article_id.to_string(),
            window_end,
            items: partners
                .iter()
                .map(|b| RelatedItem {
                    article_id: (*b).to_string(),
                    cooc: 2,
                    score: 0.5,
                })
                .collect(),
        }
    }

    const MIN: u64 = 60_000;

    #[test]
    fn export_rebuilds_the_same_state() {
        let state = ServingState::new();
        let ranking = |window_end: u64, is_final: bool| LiveUpdate::Ranking {
            kind: RankingKind::Popular,
            portal: "g1".into(),
            window_start: 0,
            window_end,
            watermark: window_end,
            is_final,
            items: Vec::new(),
        };
        state.apply(ranking(60_000, true));
        state.apply(ranking(120_000, false));
        state.apply(LiveUpdate::Related {
            portal: "g1".into(),
            article_id: "a".into(),
            window_end: 60_000,
            items: Vec::new(),
        });
        let copy = ServingState::new();
        for update in state.export() {
            copy.apply(update);
        }
        assert_eq!(
            copy.ranking("g1", RankingKind::Popular),
            state.ranking("g1", RankingKind::Popular)
        );
        assert_eq!(
            copy.final_ranking("g1", RankingKind::Popular),
            state.final_ranking("g1", RankingKind::Popular)
        );
        assert_eq!(copy.related("g1", "a"), state.related("g1", "a"));
        assert_eq!(copy.export().len(), 3);
    }

    #[test]
    fn final_then_newer_provisional_then_final() {
        let state = ServingState::new();
        assert!(state.ranking("g1", RankingKind::Popular).is_none());
        state.apply(ranking(
            RankingKind::Popular,
            "g1",
            120 * MIN,
            120 * MIN,
            true,
            &["a"],
        ));
        let r = state
            .ranking("g1", RankingKind::Popular)
            .unwrap_or_else(|| panic!());
        assert!(r.is_final);
        assert_eq!((r.window_start, r.window_end), (60 * MIN, 120 * MIN));

        state.apply(ranking(
            RankingKind::Popular,
            "g1",
            121 * MIN,
            120 * MIN + 30_000,
            false,
            &["b"],
        ));
        let r = state
            .ranking("g1", RankingKind::Popular)
            .unwrap_or_else(|| panic!());
        assert!(!r.is_final);
        assert_eq!(r.watermark, 120 * MIN + 30_000);
        assert_eq!(r.items[0].article_id, "b");
        // The final one is still there.
        let f = state
            .final_ranking("g1", RankingKind::Popular)
            .unwrap_or_else(|| panic!());
        assert_eq!(f.window_end, 120 * MIN);

        state.apply(ranking(
            RankingKind::Popular,
            "g1",
            121 * MIN,
            121 * MIN,
            true,
            &["c"],
        ));
        let r = state
            .ranking("g1", RankingKind::Popular)
            .unwrap_or_else(|| panic!());
        assert!(r.is_final);
        assert_eq!(r.items[0].article_id, "c");
        // Trending is separate.
        assert!(state.ranking("g1", RankingKind::Trending).is_none());
    }

    #[test]
    fn stale_updates_are_ignored() {
        let state = ServingState::new();
        state.apply(ranking(
            RankingKind::Trending,
            "g1",
            10 * MIN,
            10 * MIN,
            true,
            &["new"],
        ));
        // An older final, and a provisional for a window already final: both ignored.
        state.apply(ranking(
            RankingKind::Trending,
            "g1",
            9 * MIN,
            9 * MIN,
            true,
            &["old"],
        ));
        state.apply(ranking(
            RankingKind::Trending,
            "g1",
            10 * MIN,
            10 * MIN - 1,
            false,
            &["old"],
        ));
        let r = state
            .ranking("g1", RankingKind::Trending)
            .unwrap_or_else(|| panic!());
        assert_eq!(r.items[0].article_id, "new");
        assert!(r.is_final);
        // Provisional: a later watermark of the same window replaces, an earlier one does not.
        state.apply(ranking(
            RankingKind::Trending,
            "g1",
            11 * MIN,
            10 * MIN + 2,
            false,
            &["p2"],
        ));
        state.apply(ranking(
            RankingKind::Trending,
            "g1",
            11 * MIN,
            10 * MIN + 1,
            false,
            &["p1"],
        ));
        let r = state
            .ranking("g1", RankingKind::Trending)
            .unwrap_or_else(|| panic!());
        assert_eq!(r.items[0].article_id, "p2");
        state.apply(ranking(
            RankingKind::Trending,
            "g1",
            11 * MIN,
            10 * MIN + 3,
            false,
            &["p3"],
        ));
        let r = state
            .ranking("g1", RankingKind::Trending)
            .unwrap_or_else(|| panic!());
        assert_eq!(r.items[0].article_id, "p3");
    }

    #[test]
    fn provisional_only_and_window_start_saturates() {
        let state = ServingState::new();
        state.apply(ranking(RankingKind::Popular, "g2", MIN, 0, false, &["a"]));
        let r = state
            .ranking("g2", RankingKind::Popular)
            .unwrap_or_else(|| panic!());
        assert!(!r.is_final);
        assert_eq!(r.window_start, 0);
    }

    #[test]
    fn related_latest_wins_and_portals() {
        let state = ServingState::default();
        state.apply(related("g1", "a", 2 * MIN, &["b", "c"]));
        state.apply(related("g1", "a", MIN, &["old"]));
        let r = state.related("g1", "a").unwrap_or_else(|| panic!());
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.watermark(), 2 * MIN);
        state.apply(related("g1", "a", 3 * MIN, &[]));
        let r = state.related("g1", "a").unwrap_or_else(|| panic!());
        assert!(r.items.is_empty());
        assert!(state.related("g2", "a").is_none());
        assert!(state.related("g1", "b").is_none());

        assert!(state.portals().is_empty());
        assert!(state.knows_portal("g1"));
        state.apply(ranking(RankingKind::Trending, "zeta", MIN, MIN, true, &[]));
        state.apply(ranking(RankingKind::Popular, "alpha", MIN, MIN, true, &[]));
        state.apply(ranking(RankingKind::Trending, "alpha", MIN, MIN, true, &[]));
        assert_eq!(state.portals(), ["alpha", "zeta"]);
        assert!(state.knows_portal("zeta"));
        assert!(!state.knows_portal("nope"));
    }
}
