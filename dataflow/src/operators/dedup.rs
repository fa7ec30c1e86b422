//! De-duplication of retried beacons by `event_id`.
//!
//! Browsers resend a beacon when they are unsure it arrived, with the same `event_id`. An on-time
//! event is a duplicate when an earlier *accepted* event has the same `event_id` and a `ts` less
//! than `dedup_window` away (SEMANTICS, "Input"). Records are routed by `event_id`, so every copy of
//! a beacon meets the same state whichever partition it came through, and each worker sees the
//! records of one partition in that partition's order.
//!
//! An id is remembered with the `ts` of each accepted event; it is forgotten once the frontier
//! reaches `ts + dedup_window`, since every later event has `ts` at or after the frontier and so is
//! at least `dedup_window` away. State is therefore bounded by the ids of one window.
//!
//! ```
//! use pageflow_dataflow::operators::dedup::DedupState;
//! let window = 600_000; // 10 minutes
//! let mut state = DedupState::default();
//! let id = "7f1c2a9e-0001".into();
//! assert!(state.accept(&id, 1_000, window)); // first beacon: accepted
//! assert!(!state.accept(&id, 4_000, window)); // the browser's retry: a duplicate
//! state.expire(601_000, window); // the watermark is past 1_000 + 10 min: forget the id
//! assert!(state.is_empty());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::checkpoint::entries::{Entry, EntryWriter};
use crate::checkpoint::{CheckpointError, Checkpointed, OperatorStates};
use crate::event::{Event, Id};
use crate::ids::{FastMap, hash_str};
use crate::stats::JobStats;

/// The remembered ids of accepted events and when each may be forgotten.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DedupState {
    /// `event_id` → `ts` of the accepted events with that id (usually one).
    accepted: FastMap<Id, Vec<u64>>,
    /// `ts + dedup_window` → ids to forget then.
    expiries: BTreeMap<u64, Vec<Id>>,
}

impl DedupState {
    /// Decides about one on-time event: `true` if it is accepted (and remembered).
    pub fn accept(&mut self, event_id: &Id, ts: u64, window: u64) -> bool {
        if let Some(times) = self.accepted.get(event_id)
            && times.iter().any(|&seen| seen.abs_diff(ts) < window)
        {
            return false;
        }
        self.accepted
            .entry(Id::clone(event_id))
            .or_default()
            .push(ts);
        self.expiries
            .entry(ts.saturating_add(window))
            .or_default()
            .push(Id::clone(event_id));
        true
    }

    /// Forgets every id whose `ts + window` is at or below `frontier`.
    pub fn expire(&mut self, frontier: u64, window: u64) {
        while let Some(entry) = self.expiries.first_entry() {
            if *entry.key() > frontier {
                break;
            }
            let (_, ids) = entry.remove_entry();
            for id in ids {
                if let Some(times) = self.accepted.get_mut(&id) {
                    times.retain(|&ts| ts.saturating_add(window) > frontier);
                    if times.is_empty() {
                        self.accepted.remove(&id);
                    }
                }
            }
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.accepted.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty()
    }
}

/// The operator's state in checkpoints: one entry per remembered id, routed like the events.
#[derive(Debug)]
struct DedupCheckpoint {
    window: u64,
    ids: DedupState,
}

impl Checkpointed for DedupCheckpoint {
    fn save(&self, out: &mut EntryWriter) -> Result<(), CheckpointError> {
        for (id, times) in &self.ids.accepted {
            out.keyed(hash_str(id), &(id, times))?;
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        let (id, times): (Id, Vec<u64>) = entry.decode()?;
        for &ts in &times {
            self.ids
                .expiries
                .entry(ts.saturating_add(self.window))
                .or_default()
                .push(Id::clone(&id));
        }
        self.ids.accepted.entry(id).or_default().extend(times);
        Ok(())
    }
}

/// De-duplicates a stream of on-time events.
pub trait Deduplicate<'scope> {
    /// Drops duplicates (counted in `stats.duplicates`) and passes accepted events on. The
    /// remembered ids are checkpointed under `"dedup"` in `states`.
    fn deduplicate(
        self,
        window: u64,
        stats: Arc<JobStats>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event>;
}

impl<'scope> Deduplicate<'scope> for StreamVec<'scope, u64, Event> {
    fn deduplicate(
        self,
        window: u64,
        stats: Arc<JobStats>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event> {
        let route = Exchange::new(|event: &Event| hash_str(&event.event_id));
        let checkpointed = states.attach(
            "dedup",
            DedupCheckpoint {
                window,
                ids: DedupState::default(),
            },
        );
        self.unary_frontier(route, "Deduplicate", move |_capability, _info| {
            move |(input, frontier), output| {
                let state = &mut checkpointed.borrow_mut().ids;
                input.for_each(|cap, data| {
                    let before = data.len();
                    data.retain(|event| state.accept(&event.event_id, event.ts, window));
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
                    Some(&time) => state.expire(time, window),
                    None => *state = DedupState::default(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_window_are_dropped_and_ids_expire() {
        let mut state = DedupState::default();
        assert!(state.accept(&"e1".into(), 1_000, 600_000));
        assert!(
            !state.accept(&"e1".into(), 500_000, 600_000),
            "within the window"
        );
        assert!(
            state.accept(&"e1".into(), 700_000, 600_000),
            "600 s away is not a duplicate"
        );
        assert!(
            !state.accept(&"e1".into(), 1_200_000, 600_000),
            "near the second accepted one"
        );
        state.expire(601_000, 600_000);
        assert_eq!(state.len(), 1, "the first ts is forgotten, the second kept");
        state.expire(1_300_000, 600_000);
        assert!(state.is_empty());
    }
}
