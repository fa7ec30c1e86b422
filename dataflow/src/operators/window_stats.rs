//! Window statistics: sliding-window counts per article, for trending and for related.
//!
//! Windows of length `window` advance by `step` and are aligned to the epoch: window `T` (named by
//! its end) covers `[T − window, T)`. Events are counted into per-step *buckets*; window `T` is the
//! sum of the buckets `T − window ≤ b < T`. Because final windows are visited in order, each visit
//! only adds the bucket that enters and subtracts the one that leaves, so a 24-hour window costs
//! the same per step as a 1-hour one.
//!
//! For trending the state also tracks the *recent* part `[T − recent, T)`: distinct users (by a
//! 64-bit hash of `user_id`) and distinct engaged users, with a multiset of users over the recent
//! buckets so that a user leaving the recent part is subtracted exactly.
//!
//! One operator keeps two such states per article, fed by one exchange: the trending windows
//! (`trending_window` by `slide`, with the recent part) and the co-occurrence windows
//! (`cooc_window` by `cooc_slide`, views only) that `related` normalises by.
//!
//! Output: for each final window `T`, one [`ArticleWindowStats`] per article whose statistics changed
//! since the previous window (an article whose window became empty reports zero views once, then is
//! forgotten). A record about window `T` travels at time `T − slide`, so a downstream operator knows
//! window `T` is complete when its frontier reaches `T`.
//!
//! Checkpoints write what each bucket gained since the previous checkpoint as one more part of it
//! (counts, and the recent part's readers apart, so they can go when they leave the recent part);
//! the running sums, the reported statistics and the visits are rebuilt from the buckets at restore.
//!
//! ```
//! use pageflow_dataflow::event::CompactEvent;
//! use pageflow_dataflow::intern::Article;
//! use pageflow_dataflow::operators::window_stats::{WindowSpec, WindowStatsState};
//!
//! let view = |user: &str, ts: u64| CompactEvent {
//!     event_id: format!("{user}-{ts}").into(), user_id: user.into(),
//!     article: Article::intern_names("g1", "a"), ts, dwell_ms: 0, clicks: 0, scroll_pct: 0,
//! };
//! // Windows of 3 s stepping by 1 s, the last second counting distinct readers.
//! let mut state = WindowStatsState::new(WindowSpec { window: 3_000, step: 1_000, recent: Some(1_000) });
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

use crate::checkpoint::parts::BucketParts;
use crate::checkpoint::{
    ChangeWriter, CheckpointError, Checkpointed, Entry, OperatorStates, Placement, StateSize,
    key_group,
};
use crate::event::CompactEvent;
use crate::ids::{FastMap, FastSet, hash_str};
use crate::intern::{Article, ArticleTable};

use super::held::HeldCapability;

/// The shape of the windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length.
    pub window: u64,
    /// Window step and bucket size.
    pub step: u64,
    /// Length of the recent part whose distinct users are counted, if wanted.
    pub recent: Option<u64>,
}

/// The statistics of one article in one final window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArticleWindowStats {
    /// The article (and its portal).
    pub article: Article,
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

/// `(user hash, engaged)` for each view of a bucket.
type Readers = Vec<(u64, bool)>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bucket {
    views: u64,
    engaged: u64,
    /// `(user hash, engaged)` per view; only kept when the recent part is tracked.
    users: Readers,
    /// How much of it the checkpoint holds: views, engaged views, readers.
    saved: (u64, u64, usize),
}

/// The numbers reported for an article in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    views: u64,
    engaged: u64,
    older: u64,
    users: u64,
    engaged_users: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

    fn counts(&self) -> Counts {
        Counts {
            views: self.views,
            engaged: self.engaged,
            older: self.views - self.recent_views,
            users: self.distinct_users,
            engaged_users: self.distinct_engaged,
        }
    }

    /// Moves bucket `tick` into the window (and the recent part, if tracked).
    fn enter(&mut self, tick: u64, bucket: Bucket, recent: bool) {
        self.views += bucket.views;
        self.engaged += bucket.engaged;
        self.entered.push_back((tick, bucket.views, bucket.engaged));
        if recent {
            for &(user, engaged) in &bucket.users {
                self.count_user(user, engaged, 1);
            }
            self.recent_views += bucket.views;
            self.recent.push_back((tick, bucket.views, bucket.users));
        }
    }

    /// Drops what left the window `[window_end − window, window_end)` and its recent part.
    fn expire(&mut self, window_end: u64, spec: &WindowSpec) {
        let window_start = window_end.saturating_sub(spec.window);
        while let Some(&(tick, views, engaged)) = self.entered.front() {
            if tick >= window_start {
                break;
            }
            self.entered.pop_front();
            self.views -= views;
            self.engaged -= engaged;
        }
        if let Some(recent) = spec.recent {
            let recent_start = window_end.saturating_sub(recent);
            while self
                .recent
                .front()
                .is_some_and(|(tick, _, _)| *tick < recent_start)
            {
                if let Some((_, views, users)) = self.recent.pop_front() {
                    self.recent_views -= views;
                    for (user, engaged) in users {
                        self.count_user(user, engaged, -1);
                    }
                }
            }
        }
    }
}

/// A checkpoint part of a bucket's counts: `(article, views, engaged)` gained since the previous
/// part, articles by index.
#[derive(Serialize, Deserialize)]
struct CountsPart {
    articles: ArticleTable,
    counts: Vec<(u32, u64, u64)>,
}

/// A checkpoint part of a bucket's readers: `(article, user hash, engaged)`.
#[derive(Serialize, Deserialize)]
struct ReadersPart {
    articles: ArticleTable,
    readers: Vec<(u32, u64, bool)>,
}

const COUNTS_TAG: u8 = 0;
const READERS_TAG: u8 = 1;
const PROCESSED_TAG: u8 = 2;

/// The windows of every article on one worker.
#[derive(Clone, Debug)]
pub struct WindowStatsState {
    spec: WindowSpec,
    articles: FastMap<Article, ArticleWindow>,
    /// Window end → articles that must be visited then (a bucket enters, leaves the recent part,
    /// or leaves the window).
    visits: BTreeMap<u64, Vec<Article>>,
    /// Buckets with increments the checkpoint does not hold yet, and their articles.
    unsaved: BTreeMap<u64, FastSet<Article>>,
    /// Increments the checkpoint does not hold of buckets that entered the window since:
    /// `(tick, article, views, engaged, readers)`.
    entered_unsaved: Vec<(u64, Article, u64, u64, Readers)>,
    counts_parts: BucketParts,
    readers_parts: BucketParts,
    /// Every window up to this one was visited.
    processed_until: u64,
    saved_processed_until: u64,
    /// Changes are tracked for checkpoints.
    tracking: bool,
}

impl WindowStatsState {
    /// Empty state for windows of this shape.
    pub fn new(spec: WindowSpec) -> Self {
        WindowStatsState {
            spec,
            articles: FastMap::default(),
            visits: BTreeMap::new(),
            unsaved: BTreeMap::new(),
            entered_unsaved: Vec::new(),
            counts_parts: BucketParts::new(COUNTS_TAG),
            readers_parts: BucketParts::new(READERS_TAG),
            processed_until: 0,
            saved_processed_until: 0,
            tracking: true,
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
    pub fn insert(&mut self, event: &CompactEvent) {
        let user = self.spec.recent.map(|_| hash_str(&event.user_id));
        self.add(
            event.article,
            event.ts,
            1,
            u64::from(event.engaged()),
            user.map(|hash| (hash, event.engaged())),
        );
    }

    /// Adds `views` (`engaged` of them engaged, and a reader if tracked) to `article`'s bucket of `ts`.
    fn add(
        &mut self,
        article: Article,
        ts: u64,
        views: u64,
        engaged: u64,
        reader: Option<(u64, bool)>,
    ) {
        let WindowSpec {
            window,
            step,
            recent,
        } = self.spec;
        let tick = ts - ts % step;
        let state = self.articles.entry(article).or_default();
        let new_bucket = !state.pending.contains_key(&tick);
        let bucket = state.pending.entry(tick).or_default();
        bucket.views += views;
        bucket.engaged += engaged;
        if let (Some(_), Some(reader)) = (recent, reader) {
            bucket.users.push(reader);
        }
        if new_bucket {
            let enter = tick + step;
            self.visits.entry(enter).or_default().push(article);
            self.visits.entry(enter + window).or_default().push(article);
            if let Some(recent) = recent {
                self.visits.entry(enter + recent).or_default().push(article);
            }
        }
        if self.tracking {
            self.unsaved.entry(tick).or_default().insert(article);
        }
    }

    /// The oldest bucket still in the last window visited, and the oldest still in its recent
    /// part (the window itself when there is none): older ones are gone for good.
    fn oldest_needed(&self) -> (u64, u64) {
        let WindowSpec {
            window,
            step,
            recent,
        } = self.spec;
        let last_window = self.processed_until - self.processed_until % step;
        (
            last_window.saturating_sub(window),
            last_window.saturating_sub(recent.unwrap_or(window)),
        )
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
        if limit == u64::MAX {
            self.counts_parts.drop_all();
            self.readers_parts.drop_all();
            self.unsaved.clear();
            self.entered_unsaved.clear();
            return;
        }
        self.processed_until = self.processed_until.max(limit);
        // Buckets that left every window (and the recent part) need no part any more.
        let (in_window, in_recent) = self.oldest_needed();
        self.counts_parts.drop_before(in_window);
        self.readers_parts.drop_before(in_recent);
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
                out.push(stats(*key, window_end, counts, true));
            }
        }
    }

    /// The counts `visit(window_end)` would report, computed without changing the article.
    fn preview_counts(&self, article: &ArticleWindow, window_end: u64) -> Counts {
        let WindowSpec {
            window,
            step,
            recent,
        } = self.spec;
        let entering = article.pending.get(&(window_end - step));
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

    fn visit(&mut self, key: Article, window_end: u64, out: &mut Vec<ArticleWindowStats>) {
        let spec = self.spec;
        let Some(article) = self.articles.get_mut(&key) else {
            return;
        };
        if article.visited == window_end {
            return;
        }
        article.visited = window_end;
        let entering = window_end - spec.step;
        if let Some(bucket) = article.pending.remove(&entering) {
            let (views, engaged, users) = bucket.saved;
            if self.tracking
                && (bucket.views > views || bucket.engaged > engaged || bucket.users.len() > users)
            {
                self.entered_unsaved.push((
                    entering,
                    key,
                    bucket.views - views,
                    bucket.engaged - engaged,
                    bucket.users[users..].to_vec(),
                ));
            }
            article.enter(entering, bucket, spec.recent.is_some());
        }
        article.expire(window_end, &spec);
        let now = article.counts();
        if now != article.reported {
            article.reported = now;
            out.push(stats(key, window_end, now, false));
        }
        if article.is_empty() {
            self.articles.remove(&key);
        }
    }

    /// The parts of the buckets with unsaved increments.
    fn unsaved_parts(&mut self) -> Vec<(u64, CountsPart, Option<ReadersPart>)> {
        let tracks_readers = self.spec.recent.is_some();
        // Tick → (article, views, engaged, readers) gained since the last checkpoint.
        let mut gained: BTreeMap<u64, Vec<(Article, u64, u64, Readers)>> = BTreeMap::new();
        for (tick, article, views, engaged, readers) in std::mem::take(&mut self.entered_unsaved) {
            gained
                .entry(tick)
                .or_default()
                .push((article, views, engaged, readers));
        }
        for (tick, articles) in std::mem::take(&mut self.unsaved) {
            for article in articles {
                let Some(bucket) = self
                    .articles
                    .get_mut(&article)
                    .and_then(|a| a.pending.get_mut(&tick))
                else {
                    continue; // it entered the window: `entered_unsaved` has its increments
                };
                let (views, engaged, users) = bucket.saved;
                gained.entry(tick).or_default().push((
                    article,
                    bucket.views - views,
                    bucket.engaged - engaged,
                    bucket.users[users..].to_vec(),
                ));
                bucket.saved = (bucket.views, bucket.engaged, bucket.users.len());
            }
        }
        let mut parts = Vec::new();
        for (tick, mut increments) in gained {
            increments.sort_unstable_by_key(|(article, ..)| *article);
            let mut counts = CountsPart {
                articles: ArticleTable::default(),
                counts: Vec::new(),
            };
            let mut readers = ReadersPart {
                articles: ArticleTable::default(),
                readers: Vec::new(),
            };
            for (article, views, engaged, users) in increments {
                if views > 0 || engaged > 0 {
                    let index = counts.articles.index(article);
                    counts.counts.push((index, views, engaged));
                }
                if tracks_readers && !users.is_empty() {
                    let index = readers.articles.index(article);
                    readers.readers.extend(
                        users
                            .into_iter()
                            .map(|(user, engaged)| (index, user, engaged)),
                    );
                }
            }
            let readers = (!readers.readers.is_empty()).then_some(readers);
            if !counts.counts.is_empty() || readers.is_some() {
                parts.push((tick, counts, readers));
            }
        }
        parts
    }
}

fn stats(
    article: Article,
    window_end: u64,
    counts: Counts,
    provisional: bool,
) -> ArticleWindowStats {
    ArticleWindowStats {
        article,
        window_end,
        views: counts.views,
        engaged_views: counts.engaged,
        older_views: counts.older,
        recent_users: counts.users,
        recent_engaged_users: counts.engaged_users,
        provisional,
    }
}

/// Buckets as parts (see the module docs); how far the visits got, per worker and run.
impl Checkpointed for WindowStatsState {
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        self.counts_parts.save_deletes(out)?;
        self.readers_parts.save_deletes(out)?;
        // Buckets that left every window since (tiny windows) need no part.
        let (in_window, in_recent) = self.oldest_needed();
        for (tick, counts, readers) in self.unsaved_parts() {
            if !counts.counts.is_empty() && tick >= in_window {
                self.counts_parts.write_later(out, tick, counts)?;
            }
            if let Some(readers) = readers.filter(|_| tick >= in_recent) {
                self.readers_parts.write_later(out, tick, readers)?;
            }
        }
        if self.processed_until != self.saved_processed_until {
            out.put(
                Placement::Broadcast,
                &(PROCESSED_TAG, out.run(), out.worker() as u32),
                &self.processed_until,
            )?;
            self.saved_processed_until = self.processed_until;
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        let missing = |index: u32, articles: &ArticleTable| {
            CheckpointError::Decode(format!(
                "a window part names article {index} of {}",
                articles.len()
            ))
        };
        if self.counts_parts.is_part(&entry) {
            let tick = self.counts_parts.restored(&entry)?;
            let part: CountsPart = entry.value()?;
            for (index, views, engaged) in part.counts {
                let article = part
                    .articles
                    .get(index)
                    .ok_or_else(|| missing(index, &part.articles))?;
                if entry.owns(article.route()) {
                    self.add(article, tick, views, engaged, None);
                }
            }
        } else if self.readers_parts.is_part(&entry) {
            let tick = self.readers_parts.restored(&entry)?;
            let part: ReadersPart = entry.value()?;
            for (index, user, engaged) in part.readers {
                let article = part
                    .articles
                    .get(index)
                    .ok_or_else(|| missing(index, &part.articles))?;
                if entry.owns(article.route()) {
                    self.add(article, tick, 0, 0, Some((user, engaged)));
                }
            }
        } else {
            let processed: u64 = entry.value()?;
            self.processed_until = self.processed_until.max(processed);
        }
        Ok(())
    }

    /// Rebuilds every article as the visits up to the restored `processed_until` left it: buckets
    /// that entered are in the window (and the recent part), the sums and the reported statistics
    /// follow from them (the statistics only change at visits), and the remaining visits are
    /// scheduled again.
    fn finish_restore(&mut self) -> Result<(), CheckpointError> {
        let spec = self.spec;
        let processed = self.processed_until;
        self.saved_processed_until = processed;
        // The last window visited ends at a step; the frontier may have been past it.
        let last_window = processed - processed % spec.step;
        self.unsaved.clear();
        self.entered_unsaved.clear();
        self.visits.clear();
        let mut visits: Vec<(u64, Article)> = Vec::new();
        for (&key, article) in self.articles.iter_mut() {
            let pending = std::mem::take(&mut article.pending);
            for (tick, mut bucket) in pending {
                bucket.saved = (bucket.views, bucket.engaged, bucket.users.len());
                let enter = tick + spec.step;
                let times = [
                    Some(enter),
                    Some(enter + spec.window),
                    spec.recent.map(|r| enter + r),
                ];
                visits.extend(
                    times
                        .into_iter()
                        .flatten()
                        .filter(|t| *t > processed)
                        .map(|t| (t, key)),
                );
                if enter <= processed {
                    article.enter(tick, bucket, spec.recent.is_some());
                } else {
                    article.pending.insert(tick, bucket);
                }
            }
            article.expire(last_window, &spec);
            article.reported = article.counts();
            article.visited = 0;
        }
        self.articles.retain(|_, article| !article.is_empty());
        visits.sort_unstable_by(|(ta, a), (tb, b)| (ta, a).cmp(&(tb, b)));
        visits.dedup();
        for (time, key) in visits {
            if self.articles.contains_key(&key) {
                self.visits.entry(time).or_default().push(key);
            }
        }
        Ok(())
    }

    fn size(&self) -> StateSize {
        let mut bytes =
            self.articles.capacity() * (std::mem::size_of::<(Article, ArticleWindow)>() + 1);
        for article in self.articles.values() {
            bytes += article.pending.len() * (std::mem::size_of::<(u64, Bucket)>() + 16)
                + article.entered.capacity() * 24
                + article.recent_users.capacity() * 17;
            for bucket in article.pending.values() {
                bytes += bucket.users.capacity() * 16;
            }
            for (_, _, users) in &article.recent {
                bytes += 40 + users.capacity() * 16;
            }
        }
        let visits: usize = self.visits.values().map(|v| 16 + v.capacity() * 8).sum();
        StateSize {
            bytes: (bytes + visits) as u64,
            entries: self.articles.len() as u64,
        }
    }

    fn track_changes(&mut self, on: bool) {
        self.tracking = on;
    }
}

/// What the window statistics operator emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowOutput {
    /// A trending-window change (final or provisional), for the rankings.
    Trending(ArticleWindowStats),
    /// A co-occurrence-window change, for `related`.
    CoocViews(ArticleWindowStats),
}

/// The two windows of every article on one worker: trending and co-occurrence.
#[derive(Clone, Debug)]
pub struct ArticleWindows {
    /// `trending_window` by `slide`, with the recent part.
    pub trending: WindowStatsState,
    /// `cooc_window` by `cooc_slide`, views only.
    pub cooc: WindowStatsState,
}

impl ArticleWindows {
    /// Empty windows of these shapes.
    pub fn new(trending: WindowSpec, cooc: WindowSpec) -> Self {
        ArticleWindows {
            trending: WindowStatsState::new(trending),
            cooc: WindowStatsState::new(cooc),
        }
    }
}

/// The two states as one: keys of the co-occurrence windows get a prefix byte of 100 added, so
/// both keep their own part tags.
impl Checkpointed for ArticleWindows {
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        self.trending.save_changes(out)?;
        // The co-occurrence windows' keys start with `COOC_PREFIX`.
        self.cooc.save_changes(&mut out.prefixed(COOC_PREFIX))?;
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        match entry.key.split_first() {
            Some((&COOC_PREFIX, key)) => self.cooc.restore(Entry { key, ..entry }),
            _ => self.trending.restore(entry),
        }
    }

    fn finish_restore(&mut self) -> Result<(), CheckpointError> {
        self.trending.finish_restore()?;
        self.cooc.finish_restore()
    }

    fn size(&self) -> StateSize {
        let mut size = self.trending.size();
        size += self.cooc.size();
        size
    }

    fn track_changes(&mut self, on: bool) {
        self.trending.track_changes(on);
        self.cooc.track_changes(on);
    }
}

/// The first key byte of the co-occurrence windows' entries (the trending ones use 0–2).
const COOC_PREFIX: u8 = 100;

/// Sliding-window statistics per article.
pub trait WindowStats<'scope> {
    /// Changed statistics of each article at each final window, at time `window_end − slide`:
    /// trending windows and co-occurrence windows.
    ///
    /// With `live` set, also previews the trending window still filling at that processing-time
    /// interval (records with `provisional: true`, for the live view; never used for features).
    /// The windows are checkpointed under `"window_stats"` in `states`.
    fn window_stats(
        self,
        trending: WindowSpec,
        cooc: WindowSpec,
        slide: u64,
        live: Option<Duration>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, WindowOutput>;
}

impl<'scope> WindowStats<'scope> for StreamVec<'scope, u64, CompactEvent> {
    fn window_stats(
        self,
        trending: WindowSpec,
        cooc: WindowSpec,
        slide: u64,
        live: Option<Duration>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, WindowOutput> {
        let route =
            Exchange::new(|event: &CompactEvent| u64::from(key_group(event.article.route())));
        let scope = self.scope();
        let state = states.attach("window_stats", ArticleWindows::new(trending, cooc));
        // Previews wait while a checkpoint is taken: nothing may move between the drain and
        // the save on processing time alone.
        let checkpoint = states.clone();
        self.unary_frontier(route, "WindowStats", move |capability, info| {
            let activator = scope.activator_for(info.address);
            let mut held = HeldCapability::default();
            {
                let state = state.borrow();
                if !(state.trending.is_empty() && state.cooc.is_empty()) {
                    held.hold_initial(capability);
                }
            }
            let (mut trending_out, mut cooc_out) = (Vec::new(), Vec::new());
            let mut out: Vec<(u64, WindowOutput)> = Vec::new();
            let mut last_preview = Instant::now();
            let mut unpreviewed = false;
            move |(input, frontier), output| {
                let mut state = state.borrow_mut();
                input.for_each(|cap, data| {
                    held.hold(&cap);
                    unpreviewed = true;
                    for event in data.drain(..) {
                        state.trending.insert(&event);
                        state.cooc.insert(&event);
                    }
                });
                let limit = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                state.trending.advance(limit, &mut trending_out);
                state.cooc.advance(limit, &mut cooc_out);
                if let (Some(interval), true) = (live, limit != u64::MAX) {
                    if unpreviewed && last_preview.elapsed() >= interval && !checkpoint.is_paused()
                    {
                        // The window still filling ends one step after the last final one.
                        let step = trending.step;
                        state
                            .trending
                            .preview(limit - limit % step + step, &mut trending_out);
                        last_preview = Instant::now();
                        unpreviewed = false;
                    } else if unpreviewed {
                        activator.activate_after(interval);
                    }
                }
                out.extend(
                    trending_out
                        .drain(..)
                        .map(|s| (s.window_end - slide, WindowOutput::Trending(s))),
                );
                out.extend(
                    cooc_out
                        .drain(..)
                        .map(|s| (s.window_end - slide, WindowOutput::CoocViews(s))),
                );
                super::held::emit_at(&held, &mut out, output);
                let pending =
                    state.trending.next_visit().is_some() || state.cooc.next_visit().is_some();
                if pending && limit != u64::MAX {
                    held.downgrade(limit);
                } else {
                    held.release();
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::StateImage;

    fn event(user: &str, article: &str, ts: u64, engaged: bool) -> CompactEvent {
        CompactEvent {
            event_id: format!("{user}-{ts}").into(),
            user_id: user.into(),
            article: Article::intern_names("g1", article),
            ts,
            dwell_ms: if engaged { 20_000 } else { 0 },
            clicks: 0,
            scroll_pct: 0,
        }
    }

    const SPEC: WindowSpec = WindowSpec {
        window: 3_000,
        step: 1_000,
        recent: Some(1_000),
    };

    #[test]
    fn counts_enter_and_leave_and_recent_users_are_distinct() {
        let mut state = WindowStatsState::new(SPEC);
        state.insert(&event("u1", "a", 100, true));
        state.insert(&event("u1", "a", 200, false));
        state.insert(&event("u2", "a", 1_500, false));
        let mut out = Vec::new();
        state.advance(u64::MAX, &mut out);
        let at = |t: u64| out.iter().find(|s| s.window_end == t).copied();
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

    #[test]
    fn a_restore_continues_with_the_same_reports() -> Result<(), CheckpointError> {
        let mut original = WindowStatsState::new(SPEC);
        let mut image = StateImage::default();
        let mut out = Vec::new();
        for step in 0..30u64 {
            let ts = step * 300;
            original.insert(&event(
                &format!("u{}", step % 4),
                &format!("a{}", step % 3),
                ts,
                step % 2 == 0,
            ));
            if step % 4 == 3 {
                original.advance(ts - ts % 1_000, &mut out);
                let mut changes = Vec::new();
                let mut writer = ChangeWriter::new("w", 0, 1, &mut changes);
                original.save_changes(&mut writer)?;
                image.apply(changes);
            }
        }
        let mut changes = Vec::new();
        let mut writer = ChangeWriter::new("w", 0, 1, &mut changes);
        original.save_changes(&mut writer)?;
        image.apply(changes);
        let mut expected = Vec::new();
        original.clone().advance(u64::MAX, &mut expected);
        expected.sort();
        for workers in [1, 2] {
            let mut got = Vec::new();
            for mut worker in image.split(workers)?.workers {
                let mut state = WindowStatsState::new(SPEC);
                if let Some(entries) = worker.take("w") {
                    entries.for_each(|entry| state.restore(entry))?;
                }
                state.finish_restore()?;
                state.advance(u64::MAX, &mut got);
            }
            got.sort();
            assert_eq!(got, expected, "{workers} workers");
        }
        assert!(!expected.is_empty());
        Ok(())
    }
}
