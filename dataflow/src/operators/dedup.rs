//! De-duplication of retried beacons by `event_id`.
//!
//! Browsers resend a beacon when they are unsure it arrived, with the same `event_id`. An on-time
//! event is a duplicate when an earlier *accepted* event has the same `event_id` and a `ts` less
//! than `dedup_window` away (SEMANTICS, "Input"). Records are routed by `event_id`, so every copy of
//! a beacon meets the same state whichever partition it came through, and each worker sees the
//! records of one partition in that partition's order.
//!
//! An id is remembered by a 128-bit fingerprint (xxh3-128 of the `event_id`; two ids share one
//! with odds around 10⁻²⁶ for the million ids of a window) with the `ts` of each accepted event,
//! grouped by the tick of that `ts`. A tick's ids are forgotten once the frontier reaches
//! `tick + slide + dedup_window`: every later event has `ts` at or after the frontier, so it is at
//! least `dedup_window` away from all of them. State is therefore bounded by the ids of one window.
//!
//! Checkpoints write each id once: the ids a tick gained since the previous checkpoint, as one
//! more *part* of that tick (a broadcast entry named by tick, run, worker and part number); the
//! tick's parts are deleted when it is forgotten. A restored worker keeps the ids it owns.
//!
//! ```
//! use pageflow_dataflow::operators::dedup::DedupState;
//! let (window, slide) = (600_000, 60_000); // 10 minutes, ticks of a minute
//! let mut state = DedupState::new(window, slide);
//! assert!(state.accept("7f1c2a9e-0001", 1_000)); // first beacon: accepted
//! assert!(!state.accept("7f1c2a9e-0001", 4_000)); // the browser's retry: a duplicate
//! state.expire(660_000); // the frontier is past the tick of 1_000 + 10 min: forget the id
//! assert!(state.is_empty());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use timely::ExchangeData;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::checkpoint::parts::BucketParts;
use crate::checkpoint::{
    ChangeWriter, CheckpointError, Checkpointed, Entry, OperatorStates, StateSize, key_group,
};
use crate::event::{CompactEvent, DetailedEvent};
use crate::ids::FastMap;
use crate::stats::JobStats;

/// The fingerprint an `event_id` is remembered by.
pub fn fingerprint(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// The route of an event to its de-duplication state.
pub fn dedup_route(event_id: &str) -> u64 {
    fingerprint(event_id) as u64
}

/// The ids accepted with a `ts` in one tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TickIds {
    /// Fingerprints, in acceptance order.
    ids: Vec<u128>,
    /// `ids[..saved]` are in the checkpoint already.
    saved: usize,
}

/// The remembered ids of accepted events and when each may be forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupState {
    window: u64,
    slide: u64,
    /// Fingerprint → `ts` of the accepted event with that id (the latest, when several).
    seen: FastMap<u128, u64>,
    /// Ids accepted more than once (at least `window` apart): every `ts` (rare).
    repeats: FastMap<u128, Vec<u64>>,
    /// Tick of `ts` → the ids accepted with a `ts` in it.
    ticks: BTreeMap<u64, TickIds>,
    /// Each tick's parts in the checkpoint.
    parts: BucketParts,
    /// Emptied id buffers of forgotten ticks, reused (see sessionize's).
    spare: Vec<Vec<u128>>,
}

impl DedupState {
    /// Empty state for this window, with ticks of `slide`.
    pub fn new(window: u64, slide: u64) -> Self {
        DedupState {
            window,
            slide: slide.max(1),
            seen: FastMap::default(),
            repeats: FastMap::default(),
            ticks: BTreeMap::new(),
            parts: BucketParts::new(0),
            spare: Vec::new(),
        }
    }

    /// Decides about one on-time event: `true` if it is accepted (and remembered).
    pub fn accept(&mut self, event_id: &str, ts: u64) -> bool {
        let id = fingerprint(event_id);
        self.accept_fingerprint(id, ts)
    }

    fn accept_fingerprint(&mut self, id: u128, ts: u64) -> bool {
        let window = self.window;
        let near = |seen: u64| seen.abs_diff(ts) < window;
        match self.seen.get(&id).copied() {
            None => {
                self.seen.insert(id, ts);
            }
            Some(seen) => {
                if near(seen)
                    || self
                        .repeats
                        .get(&id)
                        .is_some_and(|all| all.iter().any(|&t| near(t)))
                {
                    return false;
                }
                self.repeats
                    .entry(id)
                    .or_insert_with(|| vec![seen])
                    .push(ts);
                self.seen.insert(id, seen.max(ts));
            }
        }
        self.remember(id, ts);
        true
    }

    fn remember(&mut self, id: u128, ts: u64) {
        let tick = ts - ts % self.slide;
        let spare = &mut self.spare;
        self.ticks
            .entry(tick)
            .or_insert_with(|| TickIds {
                ids: spare.pop().unwrap_or_default(),
                saved: 0,
            })
            .ids
            .push(id);
    }

    /// Forgets every id whose tick ends `window` or more before `frontier`.
    pub fn expire(&mut self, frontier: u64) {
        let (window, slide) = (self.window, self.slide);
        while let Some(entry) = self.ticks.first_entry() {
            if entry.key().saturating_add(slide).saturating_add(window) > frontier {
                break;
            }
            let (tick, mut ids) = entry.remove_entry();
            for id in ids.ids.drain(..) {
                self.forget(id, tick);
            }
            if self.spare.len() < 4 {
                self.spare.push(ids.ids);
            }
            self.parts.drop_bucket(tick);
        }
    }

    /// Forgets the acceptance of `id` in `tick` (a later one of the same id stays).
    fn forget(&mut self, id: u128, tick: u64) {
        let slide = self.slide;
        let in_tick = |ts: u64| ts - ts % slide == tick;
        if let Some(all) = self.repeats.get_mut(&id) {
            all.retain(|&ts| !in_tick(ts));
            match all.as_slice() {
                [] => {
                    self.repeats.remove(&id);
                    self.seen.remove(&id);
                }
                [only] => {
                    self.seen.insert(id, *only);
                    self.repeats.remove(&id);
                }
                rest => {
                    let latest = rest.iter().copied().max().unwrap_or(0);
                    self.seen.insert(id, latest);
                }
            }
        } else if self.seen.get(&id).is_some_and(|&ts| in_tick(ts)) {
            self.seen.remove(&id);
        }
    }

    /// Forgets everything (the end of input).
    pub fn clear(&mut self) {
        self.ticks.clear();
        self.parts.drop_all();
        self.seen = FastMap::default();
        self.repeats = FastMap::default();
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The `ts` values an id was accepted with, for a saved part.
    fn accepted_in(&self, id: u128, tick: u64) -> Vec<u64> {
        let slide = self.slide;
        match self.repeats.get(&id) {
            Some(all) => all
                .iter()
                .copied()
                .filter(|ts| ts - ts % slide == tick)
                .collect(),
            None => self.seen.get(&id).copied().into_iter().collect(),
        }
    }
}

impl Checkpointed for DedupState {
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        self.parts.save_deletes(out)?;
        let ticks: Vec<u64> = self
            .ticks
            .iter()
            .filter(|(_, ids)| ids.saved < ids.ids.len())
            .map(|(tick, _)| *tick)
            .collect();
        for tick in ticks {
            let Some(ids) = self.ticks.get(&tick) else {
                continue;
            };
            let mut new: Vec<(u128, u64)> = Vec::with_capacity(ids.ids.len() - ids.saved);
            // An id is listed once per acceptance; ids accepted more than once (rare) take their
            // acceptances of this tick in turn.
            let mut repeated: FastMap<u128, usize> = FastMap::default();
            for &id in &ids.ids[ids.saved..] {
                if self.repeats.contains_key(&id) {
                    // Acceptances saved in earlier parts of this tick come first.
                    let turn = repeated.entry(id).or_insert_with(|| {
                        ids.ids[..ids.saved].iter().filter(|x| **x == id).count()
                    });
                    if let Some(ts) = self.accepted_in(id, tick).get(*turn) {
                        new.push((id, *ts));
                    }
                    *turn += 1;
                } else if let Some(&ts) = self.seen.get(&id) {
                    new.push((id, ts));
                }
            }
            self.parts.write_later(out, tick, new)?;
            if let Some(ids) = self.ticks.get_mut(&tick) {
                ids.saved = ids.ids.len();
            }
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        self.parts.restored(&entry)?;
        let ids: Vec<(u128, u64)> = entry.value()?;
        for (id, ts) in ids {
            if entry.owns(id as u64) {
                self.accept_fingerprint(id, ts);
            }
        }
        Ok(())
    }

    fn finish_restore(&mut self) -> Result<(), CheckpointError> {
        for ids in self.ticks.values_mut() {
            ids.saved = ids.ids.len();
        }
        Ok(())
    }

    fn size(&self) -> StateSize {
        let ids: usize = self.ticks.values().map(|t| t.ids.capacity()).sum();
        StateSize {
            bytes: (self.seen.capacity() * (std::mem::size_of::<(u128, u64)>() + 1)
                + ids * std::mem::size_of::<u128>()
                + self.repeats.len() * 64) as u64,
            entries: self.seen.len() as u64,
        }
    }
}

/// What de-duplication needs of a record: its `event_id` and `ts`.
pub trait DedupKey {
    /// The beacon's id.
    fn event_id(&self) -> &str;
    /// Its event time.
    fn ts(&self) -> u64;
}

impl DedupKey for CompactEvent {
    fn event_id(&self) -> &str {
        &self.event_id
    }
    fn ts(&self) -> u64 {
        self.ts
    }
}

impl DedupKey for DetailedEvent {
    fn event_id(&self) -> &str {
        &self.event.event_id
    }
    fn ts(&self) -> u64 {
        self.event.ts
    }
}

/// De-duplicates a stream of on-time events (plain, or with their optional fields for the
/// curated lake: the same decisions either way).
pub trait Deduplicate<'scope, D> {
    /// Drops duplicates (counted in `stats.duplicates`) and passes accepted events on. The
    /// remembered ids are checkpointed under `"dedup"` in `states`.
    fn deduplicate(
        self,
        window: u64,
        slide: u64,
        stats: Arc<JobStats>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, D>;
}

impl<'scope, D> Deduplicate<'scope, D> for StreamVec<'scope, u64, D>
where
    D: DedupKey + ExchangeData,
{
    fn deduplicate(
        self,
        window: u64,
        slide: u64,
        stats: Arc<JobStats>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, D> {
        let route = Exchange::new(|event: &D| u64::from(key_group(dedup_route(event.event_id()))));
        let state = states.attach("dedup", DedupState::new(window, slide));
        self.unary_frontier(route, "Deduplicate", move |_capability, _info| {
            move |(input, frontier), output| {
                let mut state = state.borrow_mut();
                input.for_each(|cap, data| {
                    let before = data.len();
                    data.retain(|event| state.accept(event.event_id(), event.ts()));
                    let dropped = (before - data.len()) as u64;
                    if dropped > 0 {
                        stats.duplicates.fetch_add(dropped, Ordering::Relaxed);
                    }
                    stats
                        .accepted
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    output.session(&cap).give_container(data);
                });
                match frontier.frontier().first() {
                    Some(&time) => state.expire(time),
                    None => state.clear(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Placement, StateImage};

    const WINDOW: u64 = 600_000;
    const SLIDE: u64 = 60_000;

    #[test]
    fn duplicates_within_the_window_are_dropped_and_ids_expire() {
        let mut state = DedupState::new(WINDOW, SLIDE);
        assert!(state.accept("e1", 1_000));
        assert!(!state.accept("e1", 500_000), "within the window");
        assert!(state.accept("e1", 700_000), "600 s away is not a duplicate");
        assert!(
            !state.accept("e1", 1_200_000),
            "near the second accepted one"
        );
        assert!(
            !state.accept("e1", 2_000),
            "near the first, still remembered"
        );
        state.expire(660_000);
        assert_eq!(state.len(), 1, "the first ts is forgotten, the second kept");
        assert!(state.accept("e1", 2_000_000));
        state.expire(3_000_000);
        assert!(state.is_empty());
    }

    fn save(state: &mut DedupState, run: u64, worker: usize) -> Vec<crate::checkpoint::Change> {
        let mut changes = Vec::new();
        let mut out = ChangeWriter::new("dedup", worker, run, &mut changes);
        state.save_changes(&mut out).unwrap();
        changes
    }

    #[test]
    fn checkpoints_write_each_id_once_and_delete_forgotten_ticks() -> Result<(), CheckpointError> {
        let mut state = DedupState::new(WINDOW, SLIDE);
        for n in 0..100u64 {
            state.accept(&format!("e{n}"), n * 1_000);
        }
        let first = save(&mut state, 1, 0);
        assert_eq!(first.len(), 2, "two ticks, one part each");
        assert!(save(&mut state, 1, 0).is_empty(), "nothing changed");
        state.accept("late-in-tick-0", 59_000);
        let second = save(&mut state, 1, 0);
        assert_eq!(second.len(), 1, "one more part of tick 0");
        let mut image = StateImage::default();
        image.apply(first);
        image.apply(second);

        // Restored on two workers: together they know every id, each its own.
        let restore = image.split(2)?;
        let mut restored: Vec<DedupState> = Vec::new();
        for mut entries in restore.workers {
            let mut state = DedupState::new(WINDOW, SLIDE);
            if let Some(entries) = entries.take("dedup") {
                entries.for_each(|entry| state.restore(entry))?;
            }
            state.finish_restore()?;
            restored.push(state);
        }
        assert_eq!(restored.iter().map(DedupState::len).sum::<usize>(), 101);
        for id in ["e5", "e77", "late-in-tick-0"] {
            let worker = (0..2)
                .find(|w| Placement::of_route(dedup_route(id)).restores_on(*w, 2))
                .unwrap_or(0);
            assert!(
                !restored[worker].accept(id, 30_000),
                "{id} is remembered by its owner"
            );
        }

        // Forgetting both ticks deletes all three parts.
        let mut state = restored.swap_remove(0);
        state.expire(u64::MAX);
        let deletes = save(&mut state, 2, 0);
        assert_eq!(deletes.len(), 3);
        assert!(deletes.iter().all(|change| change.value.is_none()));
        Ok(())
    }
}
