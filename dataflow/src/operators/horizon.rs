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

use crate::event::Event;

/// Computes the event horizon of a stream of counted events.
pub trait EventHorizon<'scope> {
    /// Every increase of this worker's `tick(max ts) + slide`, broadcast to all workers.
    fn event_horizon(self, slide: u64) -> StreamVec<'scope, u64, u64>;
}

impl<'scope> EventHorizon<'scope> for StreamVec<'scope, u64, Event> {
    fn event_horizon(self, slide: u64) -> StreamVec<'scope, u64, u64> {
        self.unary(Pipeline, "EventHorizon", move |_capability, _info| {
            let mut horizon = 0u64;
            move |input, output| {
                input.for_each(|cap, data| {
                    let max = data
                        .iter()
                        .map(|event| event.ts - event.ts % slide + slide)
                        .max();
                    if let Some(max) = max.filter(|max| *max > horizon) {
                        horizon = max;
                        output.session(&cap).give(horizon);
                    }
                });
            }
        })
        .broadcast()
    }
}
