//! Pair counts: how often each pair of articles was read together, over the sliding
//! co-occurrence window.
//!
//! Co-occurrence window `T` (a multiple of `cooc_slide`) covers `[T − cooc_window, T)`
//! (`docs/semantics-notes.md` N16). Pairs arrive counted per *bucket* of `cooc_slide`
//! ([`PairCount`], from sessionize); window `T` is the sum of the buckets `T − cooc_window ≤ b < T`.
//! Final windows are visited in order, and each visit only adds the bucket that enters and
//! subtracts the one that leaves, so a day-long window costs the same per step as a short one.
//!
//! Each pair is held once, on the worker its pair route sends it to, as a slot with its running
//! count; each bucket is a list of `(slot, count)`. A pair lives as long as a bucket in the window
//! (or still filling) holds it. At every visit the pairs whose count changed are sent to both
//! articles as [`CoocChange`]s — only when the change matters to `related`, i.e. the count is or
//! was at least `cooc_min_support` — so `related` keeps just the partners that qualify.
//!
//! Checkpoints write what a bucket still filling gained since the previous checkpoint, as one more
//! part of it; once the bucket enters the window (and never changes again) its parts are replaced
//! by one part with all its counts; when it leaves the window, its part is deleted.
//!
//! ```
//! use pageflow_dataflow::intern::Article;
//! use pageflow_dataflow::operators::cooccurrence::PairCount;
//! use pageflow_dataflow::operators::pair_counts::{PairCountsSpec, PairCountsState};
//! let [a, b] = ["a", "b"].map(|id| Article::intern_names("g1", id));
//! let spec = PairCountsSpec { window: 2_000, cooc_slide: 1_000, slide: 1_000, min_support: 2 };
//! let mut state = PairCountsState::new(spec);
//! state.insert(PairCount { a, b, bucket: 0, count: 1 });
//! state.insert(PairCount { a, b, bucket: 1_000, count: 1 });
//! let mut changes = Vec::new();
//! state.advance(3_000, &mut changes);
//! // Window 2 s holds both buckets: cooc 2 qualifies, so both articles hear of it; window 3 s
//! // holds one: cooc 1 no longer qualifies, and they hear of that too.
//! let seen: Vec<_> = changes.iter().map(|c| (c.article.id(), c.window_end, c.cooc)).collect();
//! assert_eq!(seen, [("a", 2_000, 2), ("b", 2_000, 2), ("a", 3_000, 1), ("b", 3_000, 1)]);
//! ```

use std::collections::{BTreeMap, VecDeque};

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::checkpoint::parts::BucketParts;
use crate::checkpoint::{
    ChangeWriter, CheckpointError, Checkpointed, Entry, OperatorStates, Placement, StateSize,
    key_group,
};
use crate::ids::FastMap;
use crate::intern::{Article, ArticleTable};

use super::cooccurrence::{PairCount, pair_route};
use super::held::{HeldCapability, emit_at};

/// The parameters of the co-occurrence windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairCountsSpec {
    /// `cooc_window`.
    pub window: u64,
    /// `cooc_slide`: buckets and window steps.
    pub cooc_slide: u64,
    /// The dataflow's tick (records about window `T` travel at `T − slide`).
    pub slide: u64,
    /// `cooc_min_support`.
    pub min_support: u64,
}

/// The co-occurrence of `article` with `partner` in the window ending at `window_end`, sent to
/// `article`'s worker when it changed and is or was at least `cooc_min_support`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CoocChange {
    /// The article whose related list this concerns.
    pub article: Article,
    /// The partner.
    pub partner: Article,
    /// The window.
    pub window_end: u64,
    /// The pair's count in the window.
    pub cooc: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pair {
    a: Article,
    b: Article,
    /// The count in the current window.
    total: u32,
    /// Buckets (in the window or still filling) holding this pair.
    buckets: u32,
}

/// A bucket that has not entered a final window yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FillingBucket {
    counts: FastMap<u32, u32>,
    /// Increments since the last checkpoint, as they came (so that a checkpoint only hands
    /// them on).
    unsaved: Vec<(Article, Article, u32)>,
}

/// A checkpoint part of a bucket: `(a, b, count)` with articles by index into `articles`.
#[derive(Serialize, Deserialize)]
struct SavedPart {
    articles: ArticleTable,
    counts: Vec<(u32, u32, u32)>,
}

/// A part's pairs as copied out of the state; written as a [`SavedPart`] (its article table is
/// built when it is encoded, after the dataflow has resumed).
#[derive(Clone, Debug)]
struct CopiedPart(Vec<(Article, Article, u32)>);

impl Serialize for CopiedPart {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut part = SavedPart {
            articles: ArticleTable::default(),
            counts: Vec::with_capacity(self.0.len()),
        };
        for &(a, b, count) in &self.0 {
            let (a, b) = (part.articles.index(a), part.articles.index(b));
            part.counts.push((a, b, count));
        }
        part.serialize(serializer)
    }
}

const PARTS_TAG: u8 = 0;
const PROCESSED_TAG: u8 = 1;

/// The pair counts of the pairs routed to one worker.
#[derive(Clone, Debug)]
pub struct PairCountsState {
    spec: PairCountsSpec,
    pairs: Vec<Option<Pair>>,
    free: Vec<u32>,
    /// Slot numbers, found by pair route.
    index: HashTable<u32>,
    filling: BTreeMap<u64, FillingBucket>,
    /// Buckets in the window, oldest first.
    entered: VecDeque<(u64, Vec<(u32, u32)>)>,
    /// Buckets entered since the last checkpoint, with their final counts: their parts are
    /// replaced by one.
    to_consolidate: Vec<(u64, CopiedPart)>,
    parts: BucketParts,
    /// The last window visited.
    processed_until: u64,
    saved_processed_until: u64,
    /// Changes are tracked for checkpoints.
    tracking: bool,
}

impl PairCountsState {
    /// Empty state.
    pub fn new(spec: PairCountsSpec) -> Self {
        PairCountsState {
            spec,
            pairs: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            filling: BTreeMap::new(),
            entered: VecDeque::new(),
            to_consolidate: Vec::new(),
            parts: BucketParts::new(PARTS_TAG),
            processed_until: 0,
            saved_processed_until: 0,
            tracking: true,
        }
    }

    /// Pairs held.
    pub fn len(&self) -> usize {
        self.pairs.len() - self.free.len()
    }

    /// Whether no pair is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot_of(&mut self, a: Article, b: Article) -> u32 {
        let route = pair_route(a, b);
        let pairs = &self.pairs;
        if let Some(&slot) = self.index.find(route, |&slot| {
            pairs[slot as usize]
                .as_ref()
                .is_some_and(|p| p.a == a && p.b == b)
        }) {
            return slot;
        }
        let pair = Pair {
            a,
            b,
            total: 0,
            buckets: 0,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.pairs[slot as usize] = Some(pair);
                slot
            }
            None => {
                self.pairs.push(Some(pair));
                (self.pairs.len() - 1) as u32
            }
        };
        let pairs = &self.pairs;
        self.index.insert_unique(route, slot, |&s| {
            pairs[s as usize]
                .as_ref()
                .map_or(0, |p| pair_route(p.a, p.b))
        });
        slot
    }

    /// Counts pairs into their bucket (which must not have entered a final window yet).
    pub fn insert(&mut self, pairs: PairCount) {
        let slot = self.slot_of(pairs.a, pairs.b);
        if self.tracking && pairs.count > 0 {
            self.filling.entry(pairs.bucket).or_default().unsaved.push((
                pairs.a,
                pairs.b,
                pairs.count,
            ));
        }
        self.add(slot, pairs.bucket, pairs.count);
    }

    fn add(&mut self, slot: u32, bucket: u64, count: u32) {
        if count == 0 {
            return;
        }
        let filling = self.filling.entry(bucket).or_default();
        let held = filling.counts.entry(slot).or_default();
        if *held == 0
            && let Some(pair) = self.pairs[slot as usize].as_mut()
        {
            pair.buckets += 1;
        }
        *held += count;
    }

    fn next_window(&self) -> Option<u64> {
        let PairCountsSpec {
            window, cooc_slide, ..
        } = self.spec;
        let enters = self.filling.keys().next().map(|b| b + cooc_slide);
        let leaves = self.entered.front().map(|(b, _)| b + window + cooc_slide);
        enters.into_iter().chain(leaves).min()
    }

    /// Visits every window `T ≤ limit` at which a bucket enters or leaves, in order, appending the
    /// changes `related` needs. With `limit = u64::MAX` (the end of input) every bucket enters and
    /// leaves; `related` only looks at the windows up to the last final one.
    pub fn advance(&mut self, limit: u64, out: &mut Vec<CoocChange>) {
        while let Some(window_end) = self.next_window() {
            if window_end > limit {
                break;
            }
            self.visit(window_end, out);
        }
        if limit == u64::MAX {
            self.drop_all();
        }
    }

    fn visit(&mut self, window_end: u64, out: &mut Vec<CoocChange>) {
        let PairCountsSpec {
            window,
            cooc_slide,
            min_support,
            ..
        } = self.spec;
        // Count before this visit, of each pair it changes.
        let mut before: FastMap<u32, u32> = FastMap::default();
        let entering = window_end - cooc_slide;
        if let Some(bucket) = self.filling.remove(&entering) {
            let counts: Vec<(u32, u32)> = bucket.counts.into_iter().collect();
            for &(slot, count) in &counts {
                if let Some(pair) = self.pairs[slot as usize].as_mut() {
                    before.entry(slot).or_insert(pair.total);
                    pair.total += count;
                }
            }
            if self.tracking {
                // Copied now, while processing, rather than in a checkpoint's pause.
                let part = self.part(counts.iter().copied());
                self.to_consolidate.push((entering, part));
            }
            self.entered.push_back((entering, counts));
        }
        let mut emptied = Vec::new();
        while let Some((bucket, _)) = self.entered.front() {
            if bucket + window >= window_end {
                break;
            }
            let Some((bucket, counts)) = self.entered.pop_front() else {
                break;
            };
            for (slot, count) in counts {
                if let Some(pair) = self.pairs[slot as usize].as_mut() {
                    before.entry(slot).or_insert(pair.total);
                    pair.total -= count;
                    pair.buckets -= 1;
                    if pair.buckets == 0 {
                        emptied.push(slot);
                    }
                }
            }
            self.parts.drop_bucket(bucket);
        }
        let mut changed: Vec<(u32, u32)> = before.into_iter().collect();
        changed.sort_unstable_by_key(|(slot, _)| *slot);
        for (slot, old) in changed {
            let Some(pair) = self.pairs[slot as usize].as_ref() else {
                continue;
            };
            let new = pair.total;
            let matters = u64::from(old) >= min_support || u64::from(new) >= min_support;
            if old != new && matters {
                for (article, partner) in [(pair.a, pair.b), (pair.b, pair.a)] {
                    out.push(CoocChange {
                        article,
                        partner,
                        window_end,
                        cooc: new,
                    });
                }
            }
        }
        for slot in emptied {
            self.free_slot(slot);
        }
        self.processed_until = self.processed_until.max(window_end);
    }

    fn free_slot(&mut self, slot: u32) {
        let Some(pair) = self.pairs[slot as usize].take() else {
            return;
        };
        if let Ok(entry) = self
            .index
            .find_entry(pair_route(pair.a, pair.b), |&s| s == slot)
        {
            entry.remove();
        }
        self.free.push(slot);
    }

    fn drop_all(&mut self) {
        self.pairs.clear();
        self.free.clear();
        self.index.clear();
        self.filling.clear();
        self.entered.clear();
        self.to_consolidate.clear();
        self.parts.drop_all();
    }

    /// The pairs of `counts` (by slot) copied out, for a part encoded later.
    fn part(&self, counts: impl Iterator<Item = (u32, u32)>) -> CopiedPart {
        CopiedPart(
            counts
                .filter_map(|(slot, count)| {
                    let pair = self.pairs[slot as usize].as_ref()?;
                    Some((pair.a, pair.b, count))
                })
                .collect(),
        )
    }
}

impl Checkpointed for PairCountsState {
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        // Buckets that entered the window hold their final counts: one part replaces the others.
        for (bucket, part) in std::mem::take(&mut self.to_consolidate) {
            if !self.entered.iter().any(|(b, _)| *b == bucket) {
                continue; // it left the window already: its parts are being deleted
            }
            self.parts.drop_bucket(bucket);
            self.parts.write_later(out, bucket, part)?;
        }
        self.parts.save_deletes(out)?;
        let filling: Vec<u64> = self
            .filling
            .iter()
            .filter(|(_, bucket)| !bucket.unsaved.is_empty())
            .map(|(bucket, _)| *bucket)
            .collect();
        for bucket in filling {
            let unsaved = self
                .filling
                .get_mut(&bucket)
                .map(|b| std::mem::take(&mut b.unsaved))
                .unwrap_or_default();
            self.parts.write_later(out, bucket, CopiedPart(unsaved))?;
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
        if self.parts.is_part(&entry) {
            let bucket = self.parts.restored(&entry)?;
            let part: SavedPart = entry.value()?;
            for (a, b, count) in part.counts {
                let (Some(a), Some(b)) = (part.articles.get(a), part.articles.get(b)) else {
                    return Err(CheckpointError::Decode(format!(
                        "a pair-count part of bucket {bucket} names article {a} or {b} of {}",
                        part.articles.len()
                    )));
                };
                if entry.owns(pair_route(a, b)) {
                    let slot = self.slot_of(a, b);
                    self.add(slot, bucket, count);
                }
            }
            return Ok(());
        }
        let processed: u64 = entry.value()?;
        self.processed_until = self.processed_until.max(processed);
        Ok(())
    }

    fn finish_restore(&mut self) -> Result<(), CheckpointError> {
        // Buckets that entered a window visited before the checkpoint are in the window.
        let cooc_slide = self.spec.cooc_slide;
        let processed = self.processed_until;
        self.saved_processed_until = processed;
        let filling = std::mem::take(&mut self.filling);
        for (bucket, counts) in filling {
            if bucket + cooc_slide <= processed {
                let counts: Vec<(u32, u32)> = counts.counts.into_iter().collect();
                for &(slot, count) in &counts {
                    if let Some(pair) = self.pairs[slot as usize].as_mut() {
                        pair.total += count;
                    }
                }
                self.entered.push_back((bucket, counts));
            } else {
                self.filling.insert(bucket, counts);
            }
        }
        Ok(())
    }

    fn track_changes(&mut self, on: bool) {
        self.tracking = on;
    }

    fn size(&self) -> StateSize {
        let entered: usize = self.entered.iter().map(|(_, c)| c.capacity()).sum();
        let filling: usize = self
            .filling
            .values()
            .map(|b| b.counts.capacity() * 9 + b.unsaved.capacity() * 24)
            .sum();
        let consolidating: usize = self
            .to_consolidate
            .iter()
            .map(|(_, p)| p.0.capacity())
            .sum();
        StateSize {
            bytes: (self.pairs.capacity() * std::mem::size_of::<Option<Pair>>()
                + self.index.allocation_size()
                + self.free.capacity() * 4
                + entered * 8
                + filling
                + consolidating * std::mem::size_of::<(Article, Article, u32)>())
                as u64,
            entries: self.len() as u64,
        }
    }
}

/// Counts pairs over the co-occurrence window.
pub trait PairCounts<'scope> {
    /// The changes of each pair's count that `related` needs, at each final co-occurrence window
    /// `T`, at time `T − slide`, routed by article. The counts are checkpointed under
    /// `"pair_counts"` in `states`.
    fn pair_counts(
        self,
        spec: PairCountsSpec,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, CoocChange>;
}

impl<'scope> PairCounts<'scope> for StreamVec<'scope, u64, PairCount> {
    fn pair_counts(
        self,
        spec: PairCountsSpec,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, CoocChange> {
        let route =
            Exchange::new(|pair: &PairCount| u64::from(key_group(pair_route(pair.a, pair.b))));
        let state = states.attach("pair_counts", PairCountsState::new(spec));
        self.unary_frontier(route, "PairCounts", move |capability, _info| {
            let mut held = HeldCapability::default();
            if !state.borrow().is_empty() {
                held.hold_initial(capability);
            }
            let mut changes = Vec::new();
            let mut out: Vec<(u64, CoocChange)> = Vec::new();
            move |(input, frontier), output| {
                let mut state = state.borrow_mut();
                input.for_each(|cap, data| {
                    held.hold(&cap);
                    for pairs in data.drain(..) {
                        state.insert(pairs);
                    }
                });
                let limit = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                state.advance(limit, &mut changes);
                out.extend(
                    changes
                        .drain(..)
                        .map(|change| (change.window_end - spec.slide, change)),
                );
                emit_at(&held, &mut out, output);
                match state.next_window() {
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
    use crate::checkpoint::StateImage;

    const SPEC: PairCountsSpec = PairCountsSpec {
        window: 3_000,
        cooc_slide: 1_000,
        slide: 500,
        min_support: 2,
    };

    fn articles() -> [Article; 3] {
        ["a", "b", "c"].map(|id| Article::intern_names("g1", id))
    }

    /// The naive count of `{a, b}` in the window ending at `end`.
    fn naive(inserted: &[PairCount], a: Article, b: Article, end: u64) -> u32 {
        inserted
            .iter()
            .filter(|p| p.a == a && p.b == b && p.bucket < end && p.bucket + SPEC.window >= end)
            .map(|p| p.count)
            .sum()
    }

    #[test]
    fn counts_follow_the_window_and_only_qualifying_changes_go_out() {
        let [a, b, c] = articles();
        let inserted = [
            PairCount {
                a,
                b,
                bucket: 0,
                count: 2,
            },
            PairCount {
                a,
                b: c,
                bucket: 0,
                count: 1,
            },
            PairCount {
                a,
                b,
                bucket: 2_000,
                count: 1,
            },
            PairCount {
                a,
                b: c,
                bucket: 4_000,
                count: 1,
            },
        ];
        let mut state = PairCountsState::new(SPEC);
        for pairs in inserted {
            state.insert(pairs);
        }
        let mut changes = Vec::new();
        state.advance(10_000, &mut changes);
        for change in changes.iter().filter(|c| c.article.id() == "a") {
            let (x, y) = if change.article < change.partner {
                (change.article, change.partner)
            } else {
                (change.partner, change.article)
            };
            assert_eq!(change.cooc, naive(&inserted, x, y, change.window_end));
        }
        let ab: Vec<(u64, u32)> = changes
            .iter()
            .filter(|c| c.article == a && c.partner == b)
            .map(|c| (c.window_end, c.cooc))
            .collect();
        // 2 enters at 1 s, 3 at 3 s, the first bucket leaves at 4 s (1), the last at 6 s (0).
        assert_eq!(ab, [(1_000, 2), (3_000, 3), (4_000, 1)]);
        assert!(
            !changes.iter().any(|ch| ch.partner == c || ch.article == c),
            "a-c never reaches 2"
        );
        assert!(state.is_empty(), "every bucket left");
    }

    #[test]
    fn a_restore_continues_the_same_counts() -> Result<(), CheckpointError> {
        let [a, b, c] = articles();
        let mut original = PairCountsState::new(SPEC);
        let mut image = StateImage::default();
        let mut changes = Vec::new();
        let save = |state: &mut PairCountsState, image: &mut StateImage| {
            let mut written = Vec::new();
            let mut out = ChangeWriter::new("pair_counts", 0, 1, &mut written);
            state.save_changes(&mut out).map(|()| image.apply(written))
        };
        for step in 0..12u64 {
            let bucket = step / 2 * 1_000;
            original.insert(PairCount {
                a,
                b,
                bucket,
                count: 1,
            });
            original.insert(PairCount {
                a: b,
                b: c,
                bucket,
                count: 1 + (step % 3) as u32,
            });
            original.advance(bucket, &mut changes);
            save(&mut original, &mut image)?;
        }
        let mut expected = Vec::new();
        original.clone().advance(20_000, &mut expected);
        for workers in [1, 2] {
            let mut got = Vec::new();
            for mut worker in image.split(workers)?.workers {
                let mut state = PairCountsState::new(SPEC);
                if let Some(entries) = worker.take("pair_counts") {
                    entries.for_each(|entry| state.restore(entry))?;
                }
                state.finish_restore()?;
                state.advance(20_000, &mut got);
            }
            got.sort();
            let mut expected = expected.clone();
            expected.sort();
            assert_eq!(got, expected, "{workers} workers");
        }
        assert!(!expected.is_empty());
        Ok(())
    }
}
