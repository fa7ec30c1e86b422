//! Window statistics: sliding-window counts per `(portal, article_id)`.
//!
//! Windows of length `window` advance by `slide` and are aligned to the epoch: window `T` (named by
//! its end) covers `[T − window, T)`. Events are counted into per-slide *buckets*; window `T` is the
//! sum of the buckets `T − window ≤ b < T`. Because final windows are visited in order, each visit
//! only adds the bucket that enters and subtracts the one that leaves, so a 24-hour window costs the
//! same per step as a 1-hour one.
//!
//! For trending the operator also tracks the *recent* part `[T − recent, T)`: distinct users (by a
//! 64-bit hash of `user_id`) and distinct engaged users, with a multiset of users over the recent
//! buckets so that a user leaving the recent part is subtracted exactly.
//!
//! Output: for each final window `T`, one [`ArticleWindowStats`] per article whose statistics changed
//! since the previous window (an article whose window became empty reports zero views once, then is
//! forgotten). A record about window `T` travels at time `T − slide`, so a downstream operator knows
//! window `T` is complete when its frontier reaches `T`.
//!
//! ```
//! use pageflow_dataflow::event::Event;
//! use pageflow_dataflow::operators::window_stats::{WindowSpec, WindowStatsState};
//!
//! let view = |user: &str, ts: u64| Event {
//!     event_id: format!("{user}-{ts}").into(), portal: "g1".into(), user_id: user.into(),
//!     article_id: "a".into(), ts, dwell_ms: 0, scroll_pct: 0, clicks: 0,
//! };
//! // Windows of 3 s sliding by 1 s, the last second counting distinct readers.
//! let mut state = WindowStatsState::new(WindowSpec { window: 3_000, slide: 1_000, recent: Some(1_000) });
//! for event in [view("u1", 100), view("u1", 200), view("u2", 1_500)] {
//!     state.insert(&event);
//! }
//! let mut changes = Vec::new();
//! state.advance(2_000, &mut changes); // the frontier reached 2 s: windows ending at 1 s and 2 s are final
//! let at_2s = changes.iter().find(|s| s.window_end == 2_000).map(|s| (s.views, s.recent_users));
//! assert_eq!(at_2s, Some((3, 1))); // three views in [-1 s, 2 s); one reader in [1 s, 2 s)
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::checkpoint::entries::{Entry, EntryWriter};
use crate::checkpoint::{CheckpointError, Checkpointed, OperatorStates};
use crate::event::{Event, Id};
use crate::ids::{FastMap, FastSet, hash_str, stable_hash};

use super::held::HeldCapability;

/// The shape of the windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length.
    pub window: u64,
    /// Window step and bucket size.
    pub slide: u64,
    /// Length of the recent part whose distinct users are counted, if wanted.
    pub recent: Option<u64>,
}

/// The statistics of one article in one final window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArticleWindowStats {
    /// The site.
    pub portal: Id,
    /// The article.
    pub article_id: Id,
    /// The window's end.
    pub window_end: u64,
    /// Views in the window.
    pub views: u64,
    /// Engaged views in the window.
    pub engaged_views: u64,
    /// Views in the window before the recent part.
    pub older_views: u64,
    /// Distinct users in the recent part.
    pub recent_users: u64,
    /// Distinct users with an engaged view in the recent part.
    pub recent_engaged_users: u64,
    /// A preview of the window still filling (the live view), not a final result.
    pub provisional: bool,
}

/// An article key: `(portal, article_id)`.
pub type ArticleKey = (Id, Id);

/// The route of an article's records.
pub fn article_route(portal: &str, article_id: &str) -> u64 {
    stable_hash([portal.as_bytes(), article_id.as_bytes()])
}

/// `(user hash, engaged)` for each view of a bucket.
type Readers = Vec<(u64, bool)>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    views: u64,
    engaged: u64,
    /// `(user hash, engaged)` per view; only kept when the recent part is tracked.
    users: Readers,
}

/// The numbers reported for an article in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    views: u64,
    engaged: u64,
    older: u64,
    users: u64,
    engaged_users: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ArticleWindow {
    /// Buckets that have not entered a final window yet.
    pending: BTreeMap<u64, Bucket>,
    /// Buckets inside the current window, oldest first: `(tick, views, engaged)`.
    entered: VecDeque<(u64, u64, u64)>,
    views: u64,
    engaged: u64,
    /// Buckets inside the recent part, oldest first: `(tick, views, readers)`.
    recent: VecDeque<(u64, u64, Readers)>,
    recent_views: u64,
    /// user → (views, engaged views) in the recent part.
    recent_users: FastMap<u64, (u32, u32)>,
    distinct_users: u64,
    distinct_engaged: u64,
    /// The statistics last reported.
    reported: Counts,
    /// The last window this article was visited at.
    visited: u64,
}

impl ArticleWindow {
    fn count_user(&mut self, user: u64, engaged: bool, delta: i32) {
        let entry = self.recent_users.entry(user).or_default();
        let (before_views, before_engaged) = *entry;
        entry.0 = entry.0.saturating_add_signed(delta);
        if engaged {
            entry.1 = entry.1.saturating_add_signed(delta);
        }
        let (after_views, after_engaged) = *entry;
        if after_views == 0 {
            self.recent_users.remove(&user);
        }
        match (before_views, after_views) {
            (0, 1..) => self.distinct_users += 1,
            (1.., 0) => self.distinct_users -= 1,
            _ => {}
        }
        match (before_engaged, after_engaged) {
            (0, 1..) => self.distinct_engaged += 1,
            (1.., 0) => self.distinct_engaged -= 1,
            _ => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.entered.is_empty()
    }
}

/// The windows of every article on one worker.
#[derive(Clone, Debug)]
pub struct WindowStatsState {
    spec: WindowSpec,
    articles: FastMap<ArticleKey, ArticleWindow>,
    /// Window end → articles that must be visited then (a bucket enters, leaves the recent part,
    /// or leaves the window).
    visits: BTreeMap<u64, Vec<ArticleKey>>,
}

impl WindowStatsState {
    /// Empty state for windows of this shape.
    pub fn new(spec: WindowSpec) -> Self {
        WindowStatsState {
            spec,
            articles: FastMap::default(),
            visits: BTreeMap::new(),
        }
    }

    /// Articles with state.
    pub fn len(&self) -> usize {
        self.articles.len()
    }

    /// Whether no article has state.
    pub fn is_empty(&self) -> bool {
        self.articles.is_empty()
    }

    /// Counts an event into its bucket. It must not be final yet (its window not visited).
    pub fn insert(&mut self, event: &Event) {
        let WindowSpec {
            window,
            slide,
            recent,
        } = self.spec;
        let tick = event.ts - event.ts % slide;
        let key = (event.portal.clone(), event.article_id.clone());
        let article = self.articles.entry(key.clone()).or_default();
        let new_bucket = !article.pending.contains_key(&tick);
        let bucket = article.pending.entry(tick).or_default();
        bucket.views += 1;
        let engaged = event.engaged();
        bucket.engaged += u64::from(engaged);
        if recent.is_some() {
            bucket.users.push((hash_str(&event.user_id), engaged));
        }
        if new_bucket {
            let enter = tick + slide;
            let mut when = vec![enter, enter + window];
            if let Some(recent) = recent {
                when.push(enter + recent);
            }
            for time in when {
                self.visits.entry(time).or_default().push(key.clone());
            }
        }
    }

    /// The next window end at which something changes.
    pub fn next_visit(&self) -> Option<u64> {
        self.visits.keys().next().copied()
    }

    /// Visits every window `T ≤ limit` at which something changes, in order, appending changed
    /// statistics.
    pub fn advance(&mut self, limit: u64, out: &mut Vec<ArticleWindowStats>) {
        while let Some(entry) = self.visits.first_entry() {
            let window_end = *entry.key();
            if window_end > limit {
                break;
            }
            let keys = entry.remove();
            for key in keys {
                self.visit(key, window_end, out);
            }
        }
    }

    /// Previews window `window_end` before it is final: the statistics its visit would produce with
    /// the events received so far, for every article that changes at it. Nothing is modified.
    pub fn preview(&self, window_end: u64, out: &mut Vec<ArticleWindowStats>) {
        let Some(keys) = self.visits.get(&window_end) else {
            return;
        };
        let mut seen = FastSet::default();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            if let Some(article) = self.articles.get(key) {
                let counts = self.preview_counts(article, window_end);
                out.push(ArticleWindowStats {
                    portal: key.0.clone(),
                    article_id: key.1.clone(),
                    window_end,
                    views: counts.views,
                    engaged_views: counts.engaged,
                    older_views: counts.older,
                    recent_users: counts.users,
                    recent_engaged_users: counts.engaged_users,
                    provisional: true,
                });
            }
        }
    }

    /// The counts `visit(window_end)` would report, computed without changing the article.
    fn preview_counts(&self, article: &ArticleWindow, window_end: u64) -> Counts {
        let WindowSpec {
            window,
            slide,
            recent,
        } = self.spec;
        let entering = article.pending.get(&(window_end - slide));
        let window_start = window_end.saturating_sub(window);
        let (mut views, mut engaged) = (article.views, article.engaged);
        if let Some(bucket) = entering {
            views += bucket.views;
            engaged += bucket.engaged;
        }
        for &(_, left_views, left_engaged) in article
            .entered
            .iter()
            .take_while(|(tick, _, _)| *tick < window_start)
        {
            views -= left_views;
            engaged -= left_engaged;
        }
        let Some(recent) = recent else {
            return Counts {
                views,
                engaged,
                older: views,
                users: 0,
                engaged_users: 0,
            };
        };
        let recent_start = window_end.saturating_sub(recent);
        let mut recent_views = article.recent_views;
        // Per-user change of (views, engaged views) in the recent part.
        let mut delta: FastMap<u64, (i64, i64)> = FastMap::default();
        for (_, left_views, users) in article
            .recent
            .iter()
            .take_while(|(tick, _, _)| *tick < recent_start)
        {
            recent_views -= left_views;
            for &(user, is_engaged) in users {
                let entry = delta.entry(user).or_default();
                entry.0 -= 1;
                entry.1 -= i64::from(is_engaged);
            }
        }
        if let Some(bucket) = entering {
            recent_views += bucket.views;
            for &(user, is_engaged) in &bucket.users {
                let entry = delta.entry(user).or_default();
                entry.0 += 1;
                entry.1 += i64::from(is_engaged);
            }
        }
        let (mut users, mut engaged_users) = (
            article.distinct_users as i64,
            article.distinct_engaged as i64,
        );
        for (user, (views_delta, engaged_delta)) in delta {
            let (before_views, before_engaged) =
                article.recent_users.get(&user).copied().unwrap_or_default();
            let after_views = i64::from(before_views) + views_delta;
            let after_engaged = i64::from(before_engaged) + engaged_delta;
            users += i64::from(after_views > 0) - i64::from(before_views > 0);
            engaged_users += i64::from(after_engaged > 0) - i64::from(before_engaged > 0);
        }
        Counts {
            views,
            engaged,
            older: views - recent_views,
            users: users.max(0) as u64,
            engaged_users: engaged_users.max(0) as u64,
        }
    }

    fn visit(&mut self, key: ArticleKey, window_end: u64, out: &mut Vec<ArticleWindowStats>) {
        let WindowSpec {
            window,
            slide,
            recent,
        } = self.spec;
        let Some(article) = self.articles.get_mut(&key) else {
            return;
        };
        if article.visited == window_end {
            return;
        }
        article.visited = window_end;
        let entering = window_end - slide;
        if let Some(bucket) = article.pending.remove(&entering) {
            article.views += bucket.views;
            article.engaged += bucket.engaged;
            article
                .entered
                .push_back((entering, bucket.views, bucket.engaged));
            if recent.is_some() {
                for &(user, engaged) in &bucket.users {
                    article.count_user(user, engaged, 1);
                }
                article.recent_views += bucket.views;
                article
                    .recent
                    .push_back((entering, bucket.views, bucket.users));
            }
        }
        let window_start = window_end.saturating_sub(window);
        while let Some(&(tick, views, engaged)) = article.entered.front() {
            if tick >= window_start {
                break;
            }
            article.entered.pop_front();
            article.views -= views;
            article.engaged -= engaged;
        }
        if let Some(recent) = recent {
            let recent_start = window_end.saturating_sub(recent);
            while article
                .recent
                .front()
                .is_some_and(|(tick, _, _)| *tick < recent_start)
            {
                if let Some((_, views, users)) = article.recent.pop_front() {
                    article.recent_views -= views;
                    for (user, engaged) in users {
                        article.count_user(user, engaged, -1);
                    }
                }
            }
        }
        let now = Counts {
            views: article.views,
            engaged: article.engaged,
            older: article.views - article.recent_views,
            users: article.distinct_users,
            engaged_users: article.distinct_engaged,
        };
        if now != article.reported {
            article.reported = now;
            out.push(ArticleWindowStats {
                portal: key.0.clone(),
                article_id: key.1.clone(),
                window_end,
                views: now.views,
                engaged_views: now.engaged,
                older_views: now.older,
                recent_users: now.users,
                recent_engaged_users: now.engaged_users,
                provisional: false,
            });
        }
        if article.is_empty() {
            self.articles.remove(&key);
        }
    }
}

/// One entry per article with its scheduled visits, routed like the article's events.
impl Checkpointed for WindowStatsState {
    fn save(&self, out: &mut EntryWriter) -> Result<(), CheckpointError> {
        let mut visits: FastMap<&ArticleKey, Vec<u64>> = FastMap::default();
        for (time, keys) in &self.visits {
            for key in keys {
                visits.entry(key).or_default().push(*time);
            }
        }
        for (key, article) in &self.articles {
            let times = visits.remove(key).unwrap_or_default();
            out.keyed(article_route(&key.0, &key.1), &(key, article, times))?;
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        let (key, article, times): (ArticleKey, ArticleWindow, Vec<u64>) = entry.decode()?;
        for time in times {
            self.visits.entry(time).or_default().push(key.clone());
        }
        self.articles.insert(key, article);
        Ok(())
    }
}

/// Sliding-window statistics per article.
pub trait WindowStats<'scope> {
    /// Changed statistics of each article at each final window, at time `window_end − slide`.
    ///
    /// With `live` set, also previews the window still filling at that processing-time interval
    /// (records with `provisional: true`, for the live view; never used for features). The
    /// windows are checkpointed under `name` in `states`.
    fn window_stats(
        self,
        spec: WindowSpec,
        live: Option<Duration>,
        name: &str,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, ArticleWindowStats>;
}

impl<'scope> WindowStats<'scope> for StreamVec<'scope, u64, Event> {
    fn window_stats(
        self,
        spec: WindowSpec,
        live: Option<Duration>,
        name: &str,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, ArticleWindowStats> {
        let route = Exchange::new(|event: &Event| article_route(&event.portal, &event.article_id));
        let scope = self.scope();
        let state = states.attach(name, WindowStatsState::new(spec));
        self.unary_frontier(route, "WindowStats", move |capability, info| {
            let activator = scope.activator_for(info.address);
            let mut held = HeldCapability::default();
            if !state.borrow().is_empty() {
                held.hold_initial(capability);
            }
            let mut out = Vec::new();
            let mut last_preview = Instant::now();
            let mut unpreviewed = false;
            move |(input, frontier), output| {
                let mut state = state.borrow_mut();
                input.for_each(|cap, data| {
                    held.hold(&cap);
                    unpreviewed = true;
                    for event in data.drain(..) {
                        state.insert(&event);
                    }
                });
                let limit = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                state.advance(limit, &mut out);
                if let (Some(interval), true) = (live, limit != u64::MAX) {
                    if unpreviewed && last_preview.elapsed() >= interval {
                        // The window still filling ends one slide after the last final one.
                        state.preview(limit - limit % spec.slide + spec.slide, &mut out);
                        last_preview = Instant::now();
                        unpreviewed = false;
                    } else if unpreviewed {
                        activator.activate_after(interval);
                    }
                }
                if let Some(cap) = held.get() {
                    // Group by window so each goes out at its own time, `window_end − slide`.
                    let mut start = 0;
                    while start < out.len() {
                        let window_end = out[start].window_end;
                        let end = out[start..]
                            .iter()
                            .position(|s| s.window_end != window_end)
                            .map_or(out.len(), |offset| start + offset);
                        let time = (window_end - spec.slide).max(*cap.time());
                        output
                            .session(&cap.delayed(&time))
                            .give_iterator(out[start..end].iter().cloned());
                        start = end;
                    }
                }
                out.clear();
                match state.next_visit() {
                    Some(_) if limit != u64::MAX => held.downgrade(limit),
                    _ => held.release(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, article: &str, ts: u64, engaged: bool) -> Event {
        Event {
            event_id: format!("{user}-{ts}").into(),
            portal: "g1".into(),
            user_id: user.into(),
            article_id: article.into(),
            ts,
            dwell_ms: if engaged { 20_000 } else { 0 },
            scroll_pct: 0,
            clicks: 0,
        }
    }

    #[test]
    fn counts_enter_and_leave_and_recent_users_are_distinct() {
        let spec = WindowSpec {
            window: 3_000,
            slide: 1_000,
            recent: Some(1_000),
        };
        let mut state = WindowStatsState::new(spec);
        state.insert(&event("u1", "a", 100, true));
        state.insert(&event("u1", "a", 200, false));
        state.insert(&event("u2", "a", 1_500, false));
        let mut out = Vec::new();
        state.advance(u64::MAX, &mut out);
        let at = |t: u64| out.iter().find(|s| s.window_end == t).cloned();
        let w1 = at(1_000).unwrap_or_else(|| panic!("window 1000 reported: {out:?}"));
        assert_eq!(
            (
                w1.views,
                w1.engaged_views,
                w1.recent_users,
                w1.recent_engaged_users
            ),
            (2, 1, 1, 1)
        );
        let w2 = at(2_000).unwrap_or_else(|| panic!("window 2000 reported"));
        assert_eq!(
            (
                w2.views,
                w2.older_views,
                w2.recent_users,
                w2.recent_engaged_users
            ),
            (3, 2, 1, 0)
        );
        let w4 = at(4_000).unwrap_or_else(|| panic!("window 4000 reported"));
        assert_eq!(w4.views, 1, "the first bucket left at 4000");
        let w5 = at(5_000).unwrap_or_else(|| panic!("window 5000 reported"));
        assert_eq!(w5.views, 0, "an emptied window is reported once");
        assert!(state.is_empty());
    }
}
