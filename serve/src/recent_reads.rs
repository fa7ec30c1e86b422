//! Each reader's recent articles, per portal: what recommendations build on ("related to what you
//! just read") and filter out ("already read").
//!
//! The job records every counted read (valid, on time, de-duplicated). Per `(portal, user)` it keeps
//! the `per_user` articles with the latest read time, newest first. That is a function of the *set*
//! of reads, whatever their order: a read is kept by its article's latest time, and an article
//! already held with a later time is not moved back. Applying a read twice, or reads out of order,
//! gives the same lists; so a checkpoint may hold reads that the sources replay after restoring it.
//!
//! Memory stays bounded: a reader whose newest read is older than `ttl` (event time, measured from
//! the newest read seen) is forgotten, and when more than `max_users` readers are held the least
//! recently active are dropped. A reader is one map entry keyed by the interned portal and the user
//! id inline (up to 24 bytes), and a read is an interned article and a time (16 bytes), in a list
//! sized to what it holds. Readers are spread over [`SHARDS`] maps, each behind its own mutex held
//! only for one map operation, so recording and serving do not queue behind each other.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use compact_str::CompactString;
use pageflow_dataflow::ids::{FastMap, FastSet, hash_str};
use pageflow_dataflow::intern::{Article, Portal};
use pageflow_dataflow::live::LiveUpdate;

/// How many maps readers are spread over.
pub const SHARDS: usize = 16;

/// How many readers' reads are kept, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecentReadsLimits {
    /// Articles kept per reader and portal.
    pub per_user: usize,
    /// A reader is forgotten this long (event time, ms) after their newest read.
    pub ttl_ms: u64,
    /// At most this many `(portal, user)` pairs are held; the least recently active go first.
    pub max_users: usize,
}

impl Default for RecentReadsLimits {
    fn default() -> Self {
        RecentReadsLimits {
            per_user: 10,
            ttl_ms: 24 * 60 * 60_000,
            max_users: 1_000_000,
        }
    }
}

/// One read: an article and when it was read (event time, ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The article.
    pub article_id: Arc<str>,
    /// Event time of the latest read of it.
    pub ts: u64,
}

/// One held read: an interned article and the event time of its latest read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeldRead {
    article: Article,
    ts: u64,
}

/// A reader: `(portal, user_id)`.
type Reader = (Portal, CompactString);

/// The readers of one shard.
#[derive(Debug, Default)]
struct Shard {
    /// `(portal, user)` → their reads, newest first.
    readers: FastMap<Reader, Vec<HeldRead>>,
    /// Readers whose reads changed (or who were forgotten) since the last checkpoint; only
    /// kept when checkpoints are taken.
    changed: FastSet<Reader>,
}

impl Shard {
    /// Drops readers `keep` refuses.
    fn retain_readers(&mut self, tracking: bool, mut keep: impl FnMut(&[HeldRead]) -> bool) {
        let changed = &mut self.changed;
        self.readers.retain(|reader, reads| {
            let kept = keep(reads);
            if !kept && tracking {
                changed.insert(reader.clone());
            }
            kept
        });
    }
}

/// The recent reads of every reader. See the module docs.
#[derive(Debug)]
pub struct RecentReads {
    limits: RecentReadsLimits,
    shards: Vec<Mutex<Shard>>,
    /// `(portal, user)` pairs held, over all shards.
    users: AtomicUsize,
    /// The newest read time seen: readers are forgotten `ttl_ms` before it.
    newest_ts: AtomicU64,
    /// Checkpoints are taken: changed readers are tracked.
    tracking: AtomicBool,
}

impl Default for RecentReads {
    fn default() -> Self {
        RecentReads::new(RecentReadsLimits::default())
    }
}

impl RecentReads {
    /// Empty, keeping within `limits`.
    pub fn new(limits: RecentReadsLimits) -> Self {
        RecentReads {
            limits,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            users: AtomicUsize::new(0),
            newest_ts: AtomicU64::new(0),
            tracking: AtomicBool::new(false),
        }
    }

    /// Keeps track of changed readers from now on, for incremental checkpoints.
    pub fn track_changes(&self) {
        self.tracking.store(true, Ordering::Relaxed);
    }

    /// The limits this keeps within.
    pub fn limits(&self) -> RecentReadsLimits {
        self.limits
    }

    fn shard(&self, user_id: &str) -> MutexGuard<'_, Shard> {
        let index = (hash_str(user_id) % SHARDS as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `user_id` read `article_id` in `portal` at `ts`.
    pub fn record(&self, portal: &str, user_id: &str, article_id: &str, ts: u64) {
        self.record_article(Article::intern_names(portal, article_id), user_id, ts);
    }

    /// Records that `user_id` read `article` (of its portal) at `ts`.
    pub fn record_article(&self, article: Article, user_id: &str, ts: u64) {
        if self.limits.per_user == 0 {
            return;
        }
        self.newest_ts.fetch_max(ts, Ordering::Relaxed);
        if ts.saturating_add(self.limits.ttl_ms) < self.newest_ts.load(Ordering::Relaxed) {
            return; // Forgotten already: the reader would be swept at once.
        }
        let tracking = self.tracking.load(Ordering::Relaxed);
        let reader: Reader = (article.portal(), CompactString::from(user_id));
        let added_user = {
            let mut guard = self.shard(user_id);
            let shard = &mut *guard;
            let added = match shard.readers.get_mut(&reader) {
                Some(reads) => {
                    insert_read(reads, article, ts, self.limits.per_user);
                    false
                }
                None => {
                    // `vec!` allocates exactly one read.
                    shard
                        .readers
                        .insert(reader.clone(), vec![HeldRead { article, ts }]);
                    true
                }
            };
            if tracking {
                shard.changed.insert(reader);
            }
            added
        };
        if added_user {
            let held = self.users.fetch_add(1, Ordering::Relaxed) + 1;
            // Sweeping down to 90 % leaves room, so sweeps are rare (amortised O(1) per read).
            if held > self.limits.max_users {
                self.sweep();
            }
        }
    }

    /// Takes in a [`LiveUpdate::Reads`]; other updates are ignored.
    pub fn apply(&self, update: &LiveUpdate) {
        if let LiveUpdate::Reads {
            portal,
            user_id,
            reads,
        } = update
        {
            for (article_id, ts) in reads {
                self.record(portal, user_id, article_id, *ts);
            }
        }
    }

    /// `user_id`'s recent reads in `portal`, newest first (empty for an unknown reader).
    pub fn recent(&self, portal: &str, user_id: &str) -> Vec<Read> {
        let reader: Reader = (Portal::intern(portal), CompactString::from(user_id));
        self.shard(user_id)
            .readers
            .get(&reader)
            .map(|reads| {
                reads
                    .iter()
                    .map(|read| Read {
                        article_id: Arc::from(read.article.id()),
                        ts: read.ts,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Bytes held (estimated from the maps' capacities and the reads' lists) and readers held.
    pub fn size(&self) -> (u64, u64) {
        let mut bytes = 0usize;
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            bytes += shard.readers.capacity()
                * (std::mem::size_of::<(Reader, Vec<HeldRead>)>() + 1)
                + shard.changed.capacity() * (std::mem::size_of::<Reader>() + 1);
            for ((_, user), reads) in &shard.readers {
                bytes += (reads.capacity() * std::mem::size_of::<HeldRead>()).div_ceil(16) * 16;
                if user.is_heap_allocated() {
                    bytes += user.capacity().div_ceil(16) * 16;
                }
            }
        }
        (bytes as u64, self.users() as u64)
    }

    /// How many `(portal, user)` pairs are held.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// Forgets readers past the ttl and, above `max_users`, the least recently active down to
    /// 90 % of it.
    pub fn sweep(&self) {
        let horizon = self
            .newest_ts
            .load(Ordering::Relaxed)
            .saturating_sub(self.limits.ttl_ms);
        let tracking = self.tracking.load(Ordering::Relaxed);
        let mut newest_per_user = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain_readers(tracking, |reads| {
                reads.first().is_some_and(|r| r.ts >= horizon)
            });
            newest_per_user.extend(
                shard
                    .readers
                    .values()
                    .filter_map(|r| r.first().map(|r| r.ts)),
            );
        }
        let target = self.limits.max_users - self.limits.max_users / 10;
        if newest_per_user.len() > target {
            // Keep the `target` most recently active: drop those at or before the newest time
            // among the `drop` least recently active (ties may drop a few more).
            let drop = newest_per_user.len() - target;
            let (_, cut, _) = newest_per_user.select_nth_unstable(drop - 1);
            let cut = *cut;
            for shard in &self.shards {
                let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                shard.retain_readers(tracking, |reads| reads.first().is_some_and(|r| r.ts > cut));
            }
        }
        let held = self
            .shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .readers
                    .len()
            })
            .sum();
        self.users.store(held, Ordering::Relaxed);
    }

    /// Every reader's reads, as updates that rebuild them (saved with checkpoints): one per
    /// reader.
    pub fn export(&self) -> Vec<LiveUpdate> {
        let mut updates = Vec::with_capacity(self.users());
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            updates.extend(shard.readers.iter().map(|((portal, user), reads)| {
                LiveUpdate::Reads {
                    portal: portal.name().to_string(),
                    user_id: user.to_string(),
                    reads: reads
                        .iter()
                        .map(|read| (read.article.id().to_string(), read.ts))
                        .collect(),
                }
            }));
        }
        updates
    }

    /// The readers whose reads changed since the last call, with their reads now (newest
    /// first), or `None` for a reader forgotten since (saved with incremental checkpoints).
    #[allow(
        clippy::type_complexity,
        reason = "(portal, user, reads or gone), read once by the caller"
    )]
    pub fn take_changes(&self) -> Vec<(String, String, Option<Vec<(String, u64)>>)> {
        let mut changes = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let changed = std::mem::take(&mut shard.changed);
            for reader in changed {
                let reads = shard.readers.get(&reader).map(|reads| {
                    reads
                        .iter()
                        .map(|read| (read.article.id().to_string(), read.ts))
                        .collect()
                });
                changes.push((reader.0.name().to_string(), reader.1.to_string(), reads));
            }
        }
        changes
    }

    /// Forgets which readers changed: what is held now is what the checkpoint holds (after a
    /// restore).
    pub fn mark_saved(&self) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .changed
                .clear();
        }
    }
}

/// Puts `article` read at `ts` into `reads` (newest first, at most `limit`): a later read of a
/// held article moves it up, an earlier one changes nothing. The list grows one read at a time
/// (most readers read a few articles).
fn insert_read(reads: &mut Vec<HeldRead>, article: Article, ts: u64, limit: usize) {
    if let Some(at) = reads.iter().position(|r| r.article == article) {
        if reads[at].ts >= ts {
            return;
        }
        let mut read = reads.remove(at);
        read.ts = ts;
        let to = position_for(reads, article, ts);
        reads.insert(to, read);
        return;
    }
    let to = position_for(reads, article, ts);
    if to >= limit {
        return;
    }
    if reads.len() == reads.capacity() {
        reads.reserve_exact(1);
    }
    reads.insert(to, HeldRead { article, ts });
    reads.truncate(limit);
}

/// Where a read goes in a newest-first list; equal times are ordered by article id, so the order
/// does not depend on arrival.
fn position_for(reads: &[HeldRead], article: Article, ts: u64) -> usize {
    reads.partition_point(|r| {
        (r.ts, std::cmp::Reverse(r.article.id())) > (ts, std::cmp::Reverse(article.id()))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn limits(per_user: usize) -> RecentReadsLimits {
        RecentReadsLimits {
            per_user,
            ttl_ms: u64::MAX / 4,
            max_users: 1_000,
        }
    }

    /// The batch answer: per article its latest read, the `per_user` latest, newest first (ties by
    /// article id).
    fn oracle(reads: &[(u8, u64)], per_user: usize) -> Vec<(String, u64)> {
        let mut latest: HashMap<String, u64> = HashMap::new();
        for (article, ts) in reads {
            let entry = latest.entry(format!("a{article}")).or_insert(*ts);
            *entry = (*entry).max(*ts);
        }
        let mut all: Vec<(String, u64)> = latest.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(per_user);
        all
    }

    fn held(reads: &RecentReads, user: &str) -> Vec<(String, u64)> {
        reads
            .recent("g1", user)
            .into_iter()
            .map(|r| (r.article_id.to_string(), r.ts))
            .collect()
    }

    proptest! {
        /// Recording reads in any order, some twice, equals the batch answer.
        #[test]
        fn matches_the_batch_answer_in_any_order(
            reads in proptest::collection::vec((0u8..12, 0u64..50), 0..60),
            per_user in 1usize..6,
            shuffle_seed in any::<u64>(),
            replayed in 0usize..20,
        ) {
            let recent = RecentReads::new(limits(per_user));
            let mut order: Vec<(u8, u64)> = reads.clone();
            // A deterministic shuffle, then a replay of a prefix (as after a restore).
            let mut state = shuffle_seed | 1;
            for i in (1..order.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let replay: Vec<(u8, u64)> = order.iter().take(replayed).copied().collect();
            for (article, ts) in order.iter().chain(replay.iter()) {
                recent.record("g1", "u", &format!("a{article}"), *ts);
            }
            prop_assert_eq!(held(&recent, "u"), oracle(&reads, per_user));
            // Export and re-apply: the same lists.
            let copy = RecentReads::new(limits(per_user));
            for update in recent.export() {
                copy.apply(&update);
            }
            prop_assert_eq!(held(&copy, "u"), held(&recent, "u"));
        }
    }

    #[test]
    fn readers_are_forgotten_with_their_reads_and_changes_tracked_when_asked() {
        let recent = RecentReads::new(RecentReadsLimits {
            per_user: 2,
            ttl_ms: 100,
            max_users: 1_000,
        });
        for user in 0..40 {
            recent.record("g1", &format!("u{user}"), "a", 10);
        }
        assert!(
            recent.take_changes().is_empty(),
            "not tracked without checkpoints"
        );
        recent.track_changes();
        recent.record("g1", "late", "b", 500);
        recent.sweep();
        assert_eq!(recent.users(), 1);
        let changes = recent.take_changes();
        assert_eq!(changes.len(), 41, "the new reader and the forgotten ones");
        assert_eq!(
            changes
                .iter()
                .filter(|(_, _, reads)| reads.is_none())
                .count(),
            40
        );
        let (bytes, readers) = recent.size();
        assert_eq!(readers, 1);
        assert!(bytes > 0);
    }

    #[test]
    fn portals_and_users_are_separate() {
        let recent = RecentReads::new(limits(3));
        recent.record("g1", "u1", "a", 1);
        recent.record("ge", "u1", "b", 2);
        recent.record("g1", "u2", "c", 3);
        assert_eq!(held(&recent, "u1"), [("a".to_string(), 1)]);
        assert_eq!(recent.recent("ge", "u1")[0].article_id.as_ref(), "b");
        assert!(recent.recent("gshow", "u1").is_empty());
        assert_eq!(recent.users(), 3);
    }

    #[test]
    fn readers_past_the_ttl_are_forgotten() {
        let recent = RecentReads::new(RecentReadsLimits {
            per_user: 3,
            ttl_ms: 100,
            max_users: 1_000,
        });
        recent.record("g1", "old", "a", 10);
        recent.record("g1", "new", "b", 200);
        // Too old to be kept at all.
        recent.record("g1", "older", "c", 5);
        recent.sweep();
        assert!(recent.recent("g1", "old").is_empty());
        assert!(recent.recent("g1", "older").is_empty());
        assert_eq!(recent.recent("g1", "new").len(), 1);
        assert_eq!(recent.users(), 1);
    }

    #[test]
    fn the_least_recently_active_go_first_above_max_users() {
        let recent = RecentReads::new(RecentReadsLimits {
            per_user: 2,
            ttl_ms: u64::MAX / 4,
            max_users: 10,
        });
        for user in 0..11u64 {
            recent.record("g1", &format!("u{user}"), "a", 100 + user);
        }
        // The 11th reader triggered a sweep down to 9: the two least recently active are gone.
        assert_eq!(recent.users(), 9);
        assert!(recent.recent("g1", "u0").is_empty());
        assert!(recent.recent("g1", "u1").is_empty());
        assert_eq!(recent.recent("g1", "u10").len(), 1);
        assert_eq!(recent.recent("g1", "u2").len(), 1);
    }
}
