//! A capability an operator holds while it owes output: the earliest time it may still emit at.

use timely::dataflow::operators::{Capability, InputCapability};

/// The single capability a stateful operator keeps while it has state that may produce output.
#[derive(Debug, Default)]
pub struct HeldCapability {
    cap: Option<Capability<u64>>,
}

impl HeldCapability {
    /// Keeps the earlier of the held capability and the one a message arrived with.
    pub fn hold(&mut self, input: &InputCapability<u64>) {
        let Some(&time) = input.least() else { return };
        if self.cap.as_ref().is_none_or(|held| time < *held.time()) {
            self.cap = input.retain_least(0);
        }
    }

    /// Holds `cap` (the operator's initial capability) when restored state may need to emit
    /// before any input arrives; it is downgraded to the frontier on the first activation.
    pub fn hold_initial(&mut self, cap: Capability<u64>) {
        if self
            .cap
            .as_ref()
            .is_none_or(|held| cap.time() < held.time())
        {
            self.cap = Some(cap);
        }
    }

    /// The held capability, if any.
    pub fn get(&self) -> Option<&Capability<u64>> {
        self.cap.as_ref()
    }

    /// Moves the held capability forward to `time` (never backwards).
    pub fn downgrade(&mut self, time: u64) {
        if let Some(cap) = self.cap.as_mut()
            && time > *cap.time()
        {
            cap.downgrade(&time);
        }
    }

    /// Gives the capability up: the operator owes nothing more.
    pub fn release(&mut self) {
        self.cap = None;
    }
}

/// The earliest time two inputs may still deliver, or `None` once both have ended.
pub fn joint_frontier(
    first: &timely::progress::frontier::MutableAntichain<u64>,
    second: &timely::progress::frontier::MutableAntichain<u64>,
) -> Option<u64> {
    [first.frontier().first(), second.frontier().first()]
        .into_iter()
        .flatten()
        .min()
        .copied()
}

/// Sends each record at its time (never before the held capability's), grouped by time.
pub(crate) fn emit_at<D: Clone + 'static>(
    held: &HeldCapability,
    out: &mut Vec<(u64, D)>,
    output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
        '_,
        u64,
        timely::container::CapacityContainerBuilder<Vec<D>>,
    >,
) {
    if let Some(cap) = held.get() {
        out.sort_by_key(|(time, _)| *time);
        let mut records = out.drain(..).peekable();
        while let Some((time, first)) = records.next() {
            let time = time.max(*cap.time());
            let at = cap.delayed(&time);
            let mut session = output.session(&at);
            session.give(first);
            while let Some((_, record)) =
                records.next_if(|(next, _)| (*next).max(*cap.time()) == time)
            {
                session.give(record);
            }
        }
    }
    out.clear();
}
