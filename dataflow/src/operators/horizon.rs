//! Event horizon: the end of the last window that holds an event, known to every worker.
//!
//! A replay ends as if the watermark jumped to +∞, yet only windows up to the one containing the
//! last event are final (`SEMANTICS.md`, "End of a replay"; `docs/semantics-notes.md` N9). Operators
//! that emit per window therefore need `L = tick(max ts) + slide` over *all* events, not just their
//! own. Each worker emits its running maximum when it grows, broadcast to every worker.

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;

use crate::checkpoint::{
    ChangeWriter, CheckpointError, Checkpointed, Entry, OperatorStates, Placement, StateSize,
};
use crate::event::CompactEvent;

/// The largest horizon this worker has emitted, and the one the checkpoint holds; saved per worker
/// and run (a restored worker starts from the maximum over the saved ones, which every downstream
/// operator already knows).
#[derive(Debug, Default)]
struct Horizon {
    value: u64,
    saved: u64,
}

impl Checkpointed for Horizon {
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        if self.value != self.saved {
            out.put(
                Placement::Broadcast,
                &(out.run(), out.worker() as u32),
                &self.value,
            )?;
            self.saved = self.value;
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        self.value = self.value.max(entry.value()?);
        self.saved = self.value;
        Ok(())
    }

    fn size(&self) -> StateSize {
        StateSize {
            bytes: 16,
            entries: 1,
        }
    }
}

/// Computes the event horizon of a stream of counted events.
pub trait EventHorizon<'scope> {
    /// Every increase of this worker's `tick(max ts) + slide`, broadcast to all workers
    /// (checkpointed under `"horizon"` in `states`).
    fn event_horizon(self, slide: u64, states: &OperatorStates) -> StreamVec<'scope, u64, u64>;
}

impl<'scope> EventHorizon<'scope> for StreamVec<'scope, u64, CompactEvent> {
    fn event_horizon(self, slide: u64, states: &OperatorStates) -> StreamVec<'scope, u64, u64> {
        let state = states.attach("horizon", Horizon::default());
        self.unary(Pipeline, "EventHorizon", move |_capability, _info| {
            move |input, output| {
                let horizon = &mut state.borrow_mut().value;
                input.for_each(|cap, data| {
                    let max = data
                        .iter()
                        .map(|event| event.ts - event.ts % slide + slide)
                        .max();
                    if let Some(max) = max.filter(|max| *max > *horizon) {
                        *horizon = max;
                        output.session(&cap).give(max);
                    }
                });
            }
        })
        .broadcast()
    }
}
