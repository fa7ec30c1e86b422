//! The checkpoint control plane: an all-reduce among every worker of the job, in whatever
//! processes they run, carried by a small dataflow of its own.
//!
//! Coordinating a checkpoint needs every worker to know what every other worker says: whether a
//! checkpoint was asked for, whether its dataflow has ended, how many messages it has sent and
//! received. Within one process that could be shared memory; across processes it has to travel,
//! and the one transport every worker already has is timely's. So each worker installs a tiny
//! dataflow beside the job's: an input of [`Contribution`]s, broadcast to every worker, observed
//! by a probe. A *round* is one timestamp of that dataflow: every worker sends its contribution at
//! the round and advances its input past it; once the probe's frontier has passed the round, every
//! worker's contribution to it has arrived everywhere, and every worker reads the same set.
//!
//! Rounds are opened on demand: a worker with something to say sends at the current round, and
//! the others, seeing a contribution arrive at it, join with theirs ([`ControlPlane::opened`]). All
//! workers take the same decisions from the same contributions, so they go through the same rounds
//! in the same order.
//!
//! The plane keeps out of what it coordinates: its timestamps are `usize`, so its progress traffic
//! is logged under `timely/progress/usize`, not under the job's `timely/progress/u64` that the
//! drain counts; its channels are told apart from the job's by their dataflow index
//! ([`ControlPlane::dataflow`]) and left out of the message counts.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

/// The longest a worker waiting for a round parks between looks (arrivals wake it earlier).
const ROUND_PARK: Duration = Duration::from_millis(20);

/// What one worker says in one round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// The worker's index in the job.
    pub worker: usize,
    /// A checkpoint asked for, `(id, is_final)` (only the job's worker 0 asks).
    pub request: Option<(u64, bool)>,
    /// The worker's dataflows other than the control plane have all completed.
    pub ended: bool,
    /// The worker's message counts: data sent, data received, progress sent, progress received.
    pub traffic: [u64; 4],
    /// The worker's process asks the job to stop gracefully (it was told to stop: SIGTERM).
    pub stop: bool,
    /// A source of the worker's process failed for good: the whole job must stop.
    pub failed: bool,
}

/// Every worker's contribution to one round, by worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// The contributions, one per worker of the job.
    pub contributions: Vec<Contribution>,
}

impl Round {
    /// Whether every worker's dataflows have completed.
    pub fn all_ended(&self) -> bool {
        self.contributions.iter().all(|c| c.ended)
    }

    /// Whether some worker's dataflows have completed.
    pub fn any_ended(&self) -> bool {
        self.contributions.iter().any(|c| c.ended)
    }

    /// The checkpoint asked for in this round, if any.
    pub fn request(&self) -> Option<(u64, bool)> {
        self.contributions.iter().find_map(|c| c.request)
    }

    /// Whether some worker's process asks the job to stop.
    pub fn stop_asked(&self) -> bool {
        self.contributions.iter().any(|c| c.stop)
    }

    /// Whether a source failed for good in some worker's process.
    pub fn failed(&self) -> bool {
        self.contributions.iter().any(|c| c.failed)
    }

    /// The message counts summed over every worker.
    pub fn traffic(&self) -> [u64; 4] {
        let mut sums = [0u64; 4];
        for contribution in &self.contributions {
            for (sum, count) in sums.iter_mut().zip(contribution.traffic) {
                *sum += count;
            }
        }
        sums
    }
}

/// One worker's end of the control plane.
pub struct ControlPlane {
    input: Option<InputHandleVec<usize, Contribution>>,
    probe: ProbeHandle<usize>,
    arrived: Rc<RefCell<BTreeMap<usize, Vec<Contribution>>>>,
    round: usize,
    dataflow: usize,
    workers: usize,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("round", &self.round)
            .field("dataflow", &self.dataflow)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// The dataflow index the plane will have when installed next on `worker` (for leaving its
    /// channels out of counts set up before it is built).
    pub fn next_index(worker: &Worker) -> usize {
        worker.next_dataflow_index()
    }

    /// Builds the plane's dataflow on `worker`. Every worker must install it, in the same place
    /// among its dataflows.
    pub fn install(worker: &mut Worker) -> Self {
        let dataflow = worker.next_dataflow_index();
        let arrived: Rc<RefCell<BTreeMap<usize, Vec<Contribution>>>> = Rc::default();
        let mut input = InputHandleVec::new();
        let probe = worker.dataflow::<usize, _, _>(|scope| {
            let arrived = Rc::clone(&arrived);
            scope
                .input_from(&mut input)
                .broadcast()
                .inspect_core(move |event| {
                    // Every contribution is sent at one round, so its stamp is that round.
                    if let Ok((stamp, batch)) = event
                        && let Some(round) = stamp.least()
                    {
                        arrived
                            .borrow_mut()
                            .entry(*round)
                            .or_default()
                            .extend(batch.iter().cloned());
                    }
                })
                .probe()
                .0
        });
        ControlPlane {
            input: Some(input),
            probe,
            arrived,
            round: 0,
            dataflow,
            workers: worker.peers(),
        }
    }

    /// The plane's dataflow index.
    pub fn dataflow(&self) -> usize {
        self.dataflow
    }

    /// Whether another worker has opened the current round (its contribution has arrived).
    pub fn opened(&self) -> bool {
        self.arrived.borrow().contains_key(&self.round)
    }

    /// Sends this worker's contribution to the current round, steps `worker` until every
    /// worker's has arrived, and returns them all.
    pub fn exchange(&mut self, worker: &mut Worker, contribution: Contribution) -> Round {
        let round = self.round;
        if let Some(input) = self.input.as_mut() {
            input.send(contribution);
            input.advance_to(round + 1);
        }
        while self.probe.less_equal(&round) {
            if !worker.step_or_park(Some(ROUND_PARK)) {
                break;
            }
        }
        self.round += 1;
        let mut contributions = self.arrived.borrow_mut().remove(&round).unwrap_or_default();
        contributions.sort_by_key(|c| c.worker);
        debug_assert_eq!(contributions.len(), self.workers);
        Round { contributions }
    }

    /// Closes this worker's input, so the plane's dataflow completes once every worker's has.
    pub fn close(&mut self) {
        self.input = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The rounds each worker read, by worker.
    type RoundsRead = Arc<Mutex<Vec<(usize, Vec<Round>)>>>;

    #[test]
    fn every_worker_reads_every_contribution_of_each_round() {
        let seen: RoundsRead = Arc::default();
        let sink = Arc::clone(&seen);
        timely::execute(timely::Config::process(3), move |worker| {
            let mut plane = ControlPlane::install(worker);
            let me = worker.index();
            let mut rounds = Vec::new();
            for round in 0..4u64 {
                // Worker 2 opens every round; the others join when they see it.
                if me != 2 {
                    while !plane.opened() {
                        worker.step_or_park(Some(Duration::from_millis(1)));
                    }
                }
                rounds.push(plane.exchange(
                    worker,
                    Contribution {
                        worker: me,
                        request: (me == 0).then_some((round, false)),
                        ended: round == 3,
                        traffic: [round, me as u64, 0, 1],
                        stop: me == 1 && round == 2,
                        failed: me == 2 && round == 3,
                    },
                ));
            }
            plane.close();
            sink.lock().unwrap().push((me, rounds));
        })
        .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for (_, rounds) in seen.iter() {
            assert_eq!(rounds, &seen[0].1, "every worker reads the same rounds");
        }
        let rounds = &seen[0].1;
        assert_eq!(rounds[1].request(), Some((1, false)));
        assert_eq!(rounds[2].traffic(), [6, 3, 0, 3]);
        assert!(!rounds[2].any_ended());
        assert!(rounds[3].all_ended());
        let stops: Vec<bool> = rounds.iter().map(Round::stop_asked).collect();
        assert_eq!(stops, [false, false, true, false]);
        let failures: Vec<bool> = rounds.iter().map(Round::failed).collect();
        assert_eq!(failures, [false, false, false, true]);
        assert!(rounds.iter().all(|r| r.contributions.len() == 3));
    }
}
