//! Taking a consistent checkpoint of a running timely dataflow: pause, drain, save, resume.
//!
//! The graph's timestamps are event time, so there is no processing-time epoch whose completion
//! marks a cut (Flink's barriers travel as records instead). pageflow takes the cut by quiescence:
//!
//! 1. A checkpoint is requested ([`CheckpointCoordinator::request`]): the sources are paused, so
//!    ingest reads nothing more and every source position stays where it is.
//! 2. The workers meet between steps and drain: they step in lock-step rounds until a whole round
//!    passes in which no worker sent or received a record or a progress message, with every sent
//!    record received. Timely logs every channel send and receive; the coordinator counts them.
//!    At that point nothing is in flight anywhere, every operator has acted on the same
//!    frontier, and the state of the operators is exactly the effect of the records read so far.
//! 3. Every worker saves what changed in its operators' state since the previous checkpoint
//!    ([`OperatorStates::save_changes`]) and hands it on, then the sources resume. Only copying
//!    the changes out happens while the dataflow stands still (the large ones are encoded later,
//!    see [`super::changes::DeferredChanges`]); encoding, sorting, checksums, the write and the
//!    merging of runs happen elsewhere.
//!
//! A worker whose dataflow ends leaves the meeting; a checkpoint in progress then fails (the job is
//! ending anyway). The workers must be the threads of one process.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use timely::logging::{TimelyEvent, TimelyEventBuilder, TimelyProgressEventBuilder};
use timely::worker::Worker;

use super::CheckpointError;
use super::snapshot::WorkerSnapshot;
use super::states::OperatorStates;

/// How long an idle worker parks before looking for a checkpoint request again.
const IDLE_PARK: Duration = Duration::from_millis(20);

/// How often a worker reports the size of its operators' state ([`crate::stats::StateSizes`]).
pub const SIZE_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Messages sent and received on the dataflow's channels, counted from timely's logs.
#[derive(Debug, Default)]
struct Traffic {
    data_sent: AtomicU64,
    data_received: AtomicU64,
    progress_sent: AtomicU64,
    progress_received: AtomicU64,
}

impl Traffic {
    fn reading(&self) -> [u64; 4] {
        [
            self.data_sent.load(Ordering::SeqCst),
            self.data_received.load(Ordering::SeqCst),
            self.progress_sent.load(Ordering::SeqCst),
            self.progress_received.load(Ordering::SeqCst),
        ]
    }
}

/// A barrier for the workers of one process that a worker can leave for good.
#[derive(Debug)]
struct Meeting {
    state: Mutex<MeetingState>,
    changed: Condvar,
}

#[derive(Debug)]
struct MeetingState {
    parties: usize,
    arrived: usize,
    generation: u64,
    someone_left: bool,
}

/// A worker left the meeting: its dataflow has ended.
#[derive(Debug)]
struct Left;

impl Meeting {
    fn new(parties: usize) -> Self {
        Meeting {
            state: Mutex::new(MeetingState {
                parties,
                arrived: 0,
                generation: 0,
                someone_left: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MeetingState> {
        // A poisoned lock means a worker panicked; the counters themselves are still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn wait(&self) -> Result<(), Left> {
        let mut state = self.lock();
        if state.someone_left {
            return Err(Left);
        }
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == state.parties {
            state.arrived = 0;
            state.generation += 1;
            self.changed.notify_all();
            return Ok(());
        }
        while state.generation == generation && !state.someone_left {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poison| poison.into_inner());
        }
        if state.generation != generation {
            Ok(())
        } else {
            Err(Left)
        }
    }

    fn leave(&self) {
        self.lock().someone_left = true;
        self.changed.notify_all();
    }
}

/// The id of the checkpoint taken when the input has ended (the job numbers it when it writes it).
pub const END_OF_INPUT: u64 = 0;

/// One worker's part of a checkpoint, as handed to the job.
#[derive(Debug)]
pub struct WorkerCheckpoint {
    /// The checkpoint's id.
    pub id: u64,
    /// The worker's saved state, or why it could not be saved.
    pub snapshot: Result<WorkerSnapshot, CheckpointError>,
    /// How long the dataflow stood still on this worker (drain and save).
    pub paused_for: Duration,
    /// Of which saving the operators' state (the rest drained records in flight).
    pub saved_in: Duration,
    /// Of which stepping the dataflow to finish the records in flight (work it would have done
    /// anyway; the rest of the drain is waiting for the other workers at the meeting).
    pub drained_work: Duration,
    /// The checkpoint is the last before the job stops: the sources stay paused.
    pub is_final: bool,
}

/// Coordinates checkpoints among the workers of one process.
#[derive(Debug)]
pub struct CheckpointCoordinator {
    workers: usize,
    paused: Arc<AtomicBool>,
    requested: AtomicU64,
    final_requested: AtomicBool,
    in_progress: AtomicBool,
    /// The job is stopping: the sources stay paused whatever checkpoints complete.
    stopping: AtomicBool,
    traffic: Arc<Traffic>,
    meeting: Meeting,
    /// Where the workers meet once their dataflows have completed.
    completed: std::sync::Barrier,
    /// The worker threads, woken by a request so that none sleeps through the start of a
    /// checkpoint (an idle worker parks for up to [`IDLE_PARK`]).
    threads: Mutex<Vec<std::thread::Thread>>,
}

impl CheckpointCoordinator {
    /// A coordinator for `workers` worker threads.
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(CheckpointCoordinator {
            workers,
            paused: Arc::new(AtomicBool::new(false)),
            requested: AtomicU64::new(0),
            final_requested: AtomicBool::new(false),
            in_progress: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            traffic: Arc::default(),
            meeting: Meeting::new(workers),
            completed: std::sync::Barrier::new(workers),
            threads: Mutex::new(Vec::with_capacity(workers)),
        })
    }

    /// Asks for checkpoint `id` (ids grow): the sources pause at once. With `is_final` they stay
    /// paused afterwards (a graceful stop). Returns `false`, asking nothing, while an earlier
    /// checkpoint is still being taken or when `id` is not newer than the last one.
    pub fn request(&self, id: u64, is_final: bool) -> bool {
        if id <= self.requested.load(Ordering::SeqCst)
            || self
                .in_progress
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return false;
        }
        self.final_requested.store(is_final, Ordering::SeqCst);
        self.paused.store(true, Ordering::SeqCst);
        self.requested.store(id, Ordering::SeqCst);
        // Timely parks an idle worker with `park_timeout`: wake them all to join at once.
        for thread in self
            .threads
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
        {
            thread.unpark();
        }
        true
    }

    /// Whether a checkpoint is being taken by the workers right now.
    pub fn is_taking(&self) -> bool {
        self.in_progress.load(Ordering::SeqCst)
    }

    /// Pauses the sources for good: the job is stopping (a final checkpoint may follow).
    pub fn pause_sources(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Whether a worker's dataflow has ended (the input ended): no checkpoint can be taken now.
    pub fn has_ended(&self) -> bool {
        self.meeting.lock().someone_left
    }

    fn resume_sources(&self, is_final: bool) {
        if !is_final && !self.stopping.load(Ordering::SeqCst) {
            self.paused.store(false, Ordering::SeqCst);
        }
    }

    /// The operator states of worker `worker` in job run `run` (see
    /// [`super::ChangeWriter::run`]), restored from `restore` (see [`super::RestorePlan`]),
    /// paused by this coordinator.
    pub fn states(&self, worker: usize, run: u64, restore: super::WorkerRestore) -> OperatorStates {
        OperatorStates::new(worker, run, restore, Arc::clone(&self.paused))
    }

    /// Installs the counting of channel traffic on `worker`: call before building the dataflow.
    pub fn attach(&self, worker: &mut Worker) -> Result<(), CheckpointError> {
        let mut register = worker.log_register().ok_or_else(|| {
            CheckpointError::Unavailable(
                "timely was started without logging, so checkpoints cannot see the dataflow's traffic"
                    .to_string(),
            )
        })?;
        let traffic = Arc::clone(&self.traffic);
        register.insert::<TimelyEventBuilder, _>("timely", move |_time, events| {
            if let Some(events) = events {
                let (mut sent, mut received) = (0, 0);
                for (_, event) in events.iter() {
                    if let TimelyEvent::Messages(message) = event {
                        if message.is_send {
                            sent += 1;
                        } else {
                            received += 1;
                        }
                    }
                }
                traffic.data_sent.fetch_add(sent, Ordering::SeqCst);
                traffic.data_received.fetch_add(received, Ordering::SeqCst);
            }
        });
        let traffic = Arc::clone(&self.traffic);
        let progress = format!("timely/progress/{}", std::any::type_name::<u64>());
        register.insert::<TimelyProgressEventBuilder<u64>, _>(&progress, move |_time, events| {
            if let Some(events) = events {
                let (mut sent, mut received) = (0, 0);
                for (_, event) in events.iter() {
                    if event.is_send {
                        sent += 1;
                    } else {
                        received += 1;
                    }
                }
                traffic.progress_sent.fetch_add(sent, Ordering::SeqCst);
                traffic
                    .progress_received
                    .fetch_add(received, Ordering::SeqCst);
            }
        });
        Ok(())
    }

    /// Runs `worker` until its dataflows complete, taking part in every checkpoint requested
    /// meanwhile and handing this worker's part to `deliver`.
    ///
    /// When the input has ended and every worker's dataflow has completed, a last checkpoint
    /// ([`END_OF_INPUT`], final) saves the finished state: every partition read to its end, every
    /// result emitted. A restart from it reads nothing again (Flink's final checkpoint of a bounded
    /// job).
    pub fn run(
        &self,
        worker: &mut Worker,
        states: &OperatorStates,
        sizes: &crate::stats::StateSizes,
        mut deliver: impl FnMut(WorkerCheckpoint),
    ) {
        self.threads
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(std::thread::current());
        let mut joined = 0u64;
        let mut reported = Instant::now();
        sizes.report(worker.index(), states.sizes());
        loop {
            if !worker.step_or_park(Some(IDLE_PARK)) {
                break;
            }
            if reported.elapsed() >= SIZE_REPORT_INTERVAL {
                sizes.report(worker.index(), states.sizes());
                reported = Instant::now();
            }
            let id = self.requested.load(Ordering::SeqCst);
            if id <= joined {
                continue;
            }
            joined = id;
            let started = Instant::now();
            let is_final = self.final_requested.load(Ordering::SeqCst);
            match self.drain(worker) {
                Ok(drained_work) => {
                    let saving = Instant::now();
                    let snapshot = self.snapshot(worker.index(), states);
                    deliver(WorkerCheckpoint {
                        id,
                        snapshot,
                        paused_for: started.elapsed(),
                        saved_in: saving.elapsed(),
                        drained_work,
                        is_final,
                    });
                    // Everyone has saved: the sources may run again.
                    let everyone_saved = self.meeting.wait().is_ok();
                    if worker.index() == 0 || !everyone_saved {
                        self.resume_sources(is_final);
                        self.in_progress.store(false, Ordering::SeqCst);
                    }
                }
                Err(Ended::Here) => break,
                Err(Ended::Elsewhere) => {
                    // Another worker's dataflow has ended, so this one is about to: keep stepping.
                    tracing::info!(
                        checkpoint = id,
                        "the dataflow ended while a checkpoint was being taken; it is not written"
                    );
                    self.resume_sources(is_final);
                    self.in_progress.store(false, Ordering::SeqCst);
                }
            }
        }
        self.meeting.leave();
        self.in_progress.store(false, Ordering::SeqCst);
        sizes.report(worker.index(), states.sizes());
        // Every worker's dataflow has completed once all are here: nothing is in flight.
        let started = Instant::now();
        self.completed.wait();
        let saving = Instant::now();
        let snapshot = self.snapshot(worker.index(), states);
        deliver(WorkerCheckpoint {
            id: END_OF_INPUT,
            snapshot,
            paused_for: started.elapsed(),
            saved_in: saving.elapsed(),
            drained_work: Duration::ZERO,
            is_final: true,
        });
    }

    /// This worker's changes since its previous part, and its state's sizes.
    fn snapshot(
        &self,
        worker: usize,
        states: &OperatorStates,
    ) -> Result<WorkerSnapshot, CheckpointError> {
        let (changes, deferred) = states.save_changes()?;
        Ok(WorkerSnapshot {
            worker,
            workers: self.workers,
            changes,
            deferred,
            sizes: states.sizes(),
        })
    }

    /// Steps in lock-step with the other workers until nothing moves anywhere; returns how long
    /// this worker spent inside its steps.
    fn drain(&self, worker: &mut Worker) -> Result<Duration, Ended> {
        let mut previous: Option<[u64; 4]> = None;
        let mut stepping = Duration::ZERO;
        loop {
            // Every worker stands between steps, its logs flushed: the counts are complete.
            self.meeting.wait().map_err(|Left| Ended::Elsewhere)?;
            let now = self.traffic.reading();
            // Nobody steps before everyone has read the same counts.
            self.meeting.wait().map_err(|Left| Ended::Elsewhere)?;
            let [data_sent, data_received, ..] = now;
            if data_sent == data_received && previous == Some(now) {
                return Ok(stepping);
            }
            previous = Some(now);
            let step = Instant::now();
            if !worker.step_or_park(Some(Duration::ZERO)) {
                return Err(Ended::Here);
            }
            stepping += step.elapsed();
        }
    }
}

/// A dataflow ended during a checkpoint, which therefore cannot be completed.
#[derive(Debug)]
enum Ended {
    /// This worker's.
    Here,
    /// Another worker's.
    Elsewhere,
}
