//! Taking a consistent checkpoint of a running timely dataflow: pause, drain, save, resume.
//!
//! The graph's timestamps are event time, so there is no processing-time epoch whose completion
//! marks a cut (Flink's barriers travel as records instead). pageflow takes the cut by quiescence,
//! agreed among every worker of the job, in one process or several, through the control plane
//! ([`super::control`]):
//!
//! 1. A checkpoint is requested ([`CheckpointCoordinator::request`], in the process of the job's
//!    worker 0): its sources pause at once, and the request reaches every worker in a control
//!    round, after which every process's sources are paused, so ingest reads nothing more and
//!    every source position stays where it is.
//! 2. The workers drain: they step, and in each control round every worker tells how many
//!    records and progress messages its channels have sent and received (timely logs every
//!    channel send and receive; the coordinator counts them). When two rounds in a row give the
//!    same sums, with every record sent also received, nothing is in flight anywhere, every
//!    operator has acted on the same frontier, and the state of the operators is exactly the
//!    effect of the records read so far.
//! 3. Every worker saves what changed in its operators' state since the previous checkpoint
//!    ([`OperatorStates::save_changes`]). A last round checks that the counts did not move
//!    between the drain and the saves (a processing-time timer could have sent something) and
//!    tells every worker that all have saved; each hands its part on, and once all have (one
//!    more round) the sources resume.
//!    Only copying the changes out happens while the dataflow stands still (the large ones are
//!    encoded later, see [`super::changes::DeferredChanges`]); encoding, sorting, checksums,
//!    the write and the merging of runs happen elsewhere.
//!
//! A checkpoint asked for while some worker's dataflow has ended is not taken (the job is ending
//! anyway); once every worker's has, a last checkpoint saves the finished state.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::logging::{ParkEvent, TimelyEvent, TimelyEventBuilder, TimelyProgressEventBuilder};
use timely::worker::Worker;

use super::CheckpointError;
use super::control::{Contribution, ControlPlane};
use super::snapshot::WorkerSnapshot;
use super::states::OperatorStates;

/// How long an idle worker parks before looking for a checkpoint request again.
const IDLE_PARK: Duration = Duration::from_millis(20);

/// How often a worker reports the size of its operators' state ([`crate::stats::StateSizes`]).
pub const SIZE_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Messages sent and received on one worker's channels (those of the job's dataflows, not the
/// control plane's), counted from timely's logs.
#[derive(Debug, Default)]
struct Traffic {
    data_sent: AtomicU64,
    data_received: AtomicU64,
    progress_sent: AtomicU64,
    progress_received: AtomicU64,
    /// The control plane's dataflow index on this worker (`usize::MAX` until it is known).
    control_dataflow: AtomicUsize,
    /// Nanoseconds the worker has spent parked (idle), from timely's park events.
    parked_nanos: AtomicU64,
}

impl Traffic {
    fn new() -> Self {
        Traffic {
            control_dataflow: AtomicUsize::new(usize::MAX),
            ..Traffic::default()
        }
    }

    fn reading(&self) -> [u64; 4] {
        [
            self.data_sent.load(Ordering::SeqCst),
            self.data_received.load(Ordering::SeqCst),
            self.progress_sent.load(Ordering::SeqCst),
            self.progress_received.load(Ordering::SeqCst),
        ]
    }
}

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
    /// anyway; the rest of the drain is parked, waiting for the other workers' rounds).
    pub drained_work: Duration,
    /// The checkpoint is the last before the job stops: the sources stay paused.
    pub is_final: bool,
    /// Nothing was sent or received anywhere between the drain and the workers' saves, so the
    /// parts form a consistent cut. When not (a timer fired in between), the parts' changes
    /// must not be committed as this checkpoint; they go into the next one.
    pub consistent: bool,
    /// The checkpoint taken once the input has ended and every dataflow has completed. Its id
    /// is the next after the last one asked for (or the first id, see
    /// [`CheckpointCoordinator::number_from`]): every worker of every process gives it the same.
    pub end_of_input: bool,
}

/// Coordinates checkpoints among the workers of one process, and through the control plane
/// with the workers of every other process of the job.
#[derive(Debug)]
pub struct CheckpointCoordinator {
    paused: Arc<AtomicBool>,
    requested: AtomicU64,
    final_requested: AtomicBool,
    in_progress: AtomicBool,
    /// The job is stopping: the sources stay paused whatever checkpoints complete.
    stopping: AtomicBool,
    /// Some worker's dataflow has ended (as far as this process has heard).
    ended: AtomicBool,
    /// The first checkpoint id of this run (the end-of-input checkpoint takes no smaller one).
    first_id: AtomicU64,
    /// Each local worker's traffic counts, by the worker's index in the job.
    traffic: Mutex<BTreeMap<usize, Arc<Traffic>>>,
    /// The worker threads, woken by a request so that none sleeps through the start of a
    /// checkpoint (an idle worker parks for up to [`IDLE_PARK`]).
    threads: Mutex<Vec<std::thread::Thread>>,
    /// How the job ends, as this process asks and as it has heard from every process.
    ending: Ending,
}

/// How the job ends: a graceful stop asked by some process, a failed source somewhere, or a
/// final checkpoint; told to every worker of every process through the control plane.
#[derive(Default)]
struct Ending {
    /// This process asks the job to stop gracefully (it was told to stop).
    stop_wanted: AtomicBool,
    /// A source of this process failed for good.
    failed_here: AtomicBool,
    /// Every worker has heard that some process asks the job to stop.
    stop_heard: AtomicBool,
    /// Every worker has heard that a source failed for good somewhere.
    failure_heard: AtomicBool,
    /// A final checkpoint was asked for (the job stops after it).
    final_heard: AtomicBool,
    /// Told once, when this process first hears that the job ends (see
    /// [`CheckpointCoordinator::when_the_job_ends`]).
    told: AtomicBool,
    hook: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ending")
            .field("stop_wanted", &self.stop_wanted)
            .field("failed_here", &self.failed_here)
            .field("stop_heard", &self.stop_heard)
            .field("failure_heard", &self.failure_heard)
            .field("final_heard", &self.final_heard)
            .finish_non_exhaustive()
    }
}

impl Ending {
    /// This process has heard that the job ends: runs the hook once.
    fn tell(&self) {
        if !self.told.swap(true, Ordering::SeqCst)
            && let Some(hook) = self.hook.get()
        {
            hook();
        }
    }
}

impl CheckpointCoordinator {
    /// A coordinator for the worker threads of this process (`workers` of them).
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(CheckpointCoordinator {
            paused: Arc::new(AtomicBool::new(false)),
            requested: AtomicU64::new(0),
            final_requested: AtomicBool::new(false),
            in_progress: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            first_id: AtomicU64::new(1),
            traffic: Mutex::new(BTreeMap::new()),
            threads: Mutex::new(Vec::with_capacity(workers)),
            ending: Ending::default(),
        })
    }

    /// This process asks the whole job to stop gracefully (it was told to: SIGTERM). The workers
    /// tell every process in a control round; the process of the job's worker 0 then takes the
    /// final checkpoint ([`CheckpointCoordinator::stop_asked`]).
    pub fn ask_to_stop(&self) {
        self.ending.stop_wanted.store(true, Ordering::SeqCst);
        self.wake_workers();
    }

    /// A source of this process failed for good: every process is told, and the whole job
    /// stops ([`CheckpointCoordinator::failure_heard`]).
    pub fn report_failure(&self) {
        self.ending.failed_here.store(true, Ordering::SeqCst);
        self.wake_workers();
    }

    /// Whether some process asked the job to stop, and every worker of every process has heard
    /// it (so a process may leave without the others taking it for lost).
    pub fn stop_asked(&self) -> bool {
        self.ending.stop_heard.load(Ordering::SeqCst)
    }

    /// Whether a source failed for good in some process, and every worker has heard it.
    pub fn failure_heard(&self) -> bool {
        self.ending.failure_heard.load(Ordering::SeqCst)
    }

    /// Whether the job is ending as far as this process has heard: a final checkpoint was asked
    /// for, some process asked to stop, or a source failed somewhere.
    pub fn is_ending(&self) -> bool {
        self.ending.final_heard.load(Ordering::SeqCst) || self.stop_asked() || self.failure_heard()
    }

    /// Runs `hook` once, on the worker thread that first hears that the job ends (a final
    /// checkpoint, a stop asked, a failure or the end of the input), before that worker
    /// answers another round. A process of a cluster uses it to stop taking a lost peer for a
    /// failure: a peer may now leave first. Set it before the workers run.
    pub fn when_the_job_ends(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.ending.hook.set(Box::new(hook));
    }

    fn wake_workers(&self) {
        for thread in lock(&self.threads).iter() {
            thread.unpark();
        }
    }

    /// Asks for checkpoint `id` (ids grow): the sources pause at once. With `is_final` they stay
    /// paused afterwards (a graceful stop). Returns `false`, asking nothing, while an earlier
    /// checkpoint is still being taken or when `id` is not newer than the last one. Only the
    /// process of the job's worker 0 asks; the control plane tells the others.
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
        self.wake_workers();
        true
    }

    /// Checkpoint ids of this run start at `first_id` (the same in every process): the
    /// end-of-input checkpoint takes it when no checkpoint was asked for. Call before the workers
    /// run.
    pub fn number_from(&self, first_id: u64) {
        self.first_id.store(first_id, Ordering::SeqCst);
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
        self.ended.load(Ordering::SeqCst)
    }

    fn resume_sources(&self, is_final: bool) {
        if !is_final && !self.stopping.load(Ordering::SeqCst) {
            self.paused.store(false, Ordering::SeqCst);
        }
    }

    /// A checkpoint is over (taken or not): the next may be asked for.
    fn finish(&self, worker: usize, is_final: bool) {
        self.resume_sources(is_final);
        if worker == 0 {
            self.in_progress.store(false, Ordering::SeqCst);
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
        let traffic = Arc::new(Traffic::new());
        lock(&self.traffic).insert(worker.index(), Arc::clone(&traffic));
        let counted = Arc::clone(&traffic);
        // The control plane's channels, learned as they are created (their dataflow index is the
        // first element of their scope address).
        let mut control_channels = HashSet::new();
        let mut parked_since: Option<Duration> = None;
        register.insert::<TimelyEventBuilder, _>("timely", move |_time, events| {
            if let Some(events) = events {
                let control = counted.control_dataflow.load(Ordering::SeqCst);
                let (mut sent, mut received, mut parked) = (0, 0, Duration::ZERO);
                for (at, event) in events.iter() {
                    match event {
                        TimelyEvent::Park(ParkEvent::Park(_)) => parked_since = Some(*at),
                        TimelyEvent::Park(ParkEvent::Unpark) => {
                            if let Some(since) = parked_since.take() {
                                parked += at.saturating_sub(since);
                            }
                        }
                        TimelyEvent::Channels(channel)
                            if channel.scope_addr.first() == Some(&control) =>
                        {
                            control_channels.insert(channel.id);
                        }
                        TimelyEvent::Messages(message)
                            if !control_channels.contains(&message.channel) =>
                        {
                            if message.is_send {
                                sent += 1;
                            } else {
                                received += 1;
                            }
                        }
                        _ => {}
                    }
                }
                counted.data_sent.fetch_add(sent, Ordering::SeqCst);
                counted.data_received.fetch_add(received, Ordering::SeqCst);
                counted
                    .parked_nanos
                    .fetch_add(parked.as_nanos() as u64, Ordering::SeqCst);
            }
        });
        // The job's dataflows have `u64` timestamps; the control plane's are `usize`, logged apart.
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
    /// meanwhile and handing this worker's part to `deliver`. Call after building the worker's
    /// dataflows: it installs the control plane beside them.
    ///
    /// When the input has ended and every worker's dataflow has completed, a last checkpoint
    /// ([`WorkerCheckpoint::end_of_input`], final) saves the finished state: every partition read to its end, every
    /// result emitted. A restart from it reads nothing again (Flink's final checkpoint of a bounded
    /// job).
    pub fn run(
        &self,
        worker: &mut Worker,
        states: &OperatorStates,
        sizes: &crate::stats::StateSizes,
        mut deliver: impl FnMut(WorkerCheckpoint),
    ) {
        lock(&self.threads).push(std::thread::current());
        let me = worker.index();
        let traffic = lock(&self.traffic)
            .get(&me)
            .cloned()
            .unwrap_or_else(|| Arc::new(Traffic::new()));
        traffic
            .control_dataflow
            .store(ControlPlane::next_index(worker), Ordering::SeqCst);
        let mut control = ControlPlane::install(worker);
        let mut joined = 0u64;
        let mut said = Contribution::default();
        let (mut heard_stop, mut heard_failure) = (false, false);
        let mut reported = Instant::now();
        sizes.report(me, states.sizes());
        loop {
            worker.step_or_park(Some(IDLE_PARK));
            let ended = job_ended(worker, &control);
            if reported.elapsed() >= SIZE_REPORT_INTERVAL {
                sizes.report(me, states.sizes());
                reported = Instant::now();
            }
            let request = (me == 0)
                .then(|| self.requested.load(Ordering::SeqCst))
                .filter(|&id| id > joined)
                .map(|id| (id, self.final_requested.load(Ordering::SeqCst)));
            let stop = self.ending.stop_wanted.load(Ordering::SeqCst);
            let failed = self.ending.failed_here.load(Ordering::SeqCst);
            let news = request.is_some()
                || ended != said.ended
                || stop != said.stop
                || failed != said.failed;
            if !news && !control.opened() {
                continue;
            }
            // A checkpoint's pause counts from here: the round that asks for it.
            let started = Instant::now();
            said = Contribution {
                worker: me,
                request,
                ended,
                traffic: [0; 4],
                stop,
                failed,
            };
            let round = control.exchange(worker, said.clone());
            if round.any_ended() {
                self.ended.store(true, Ordering::SeqCst);
                self.ending.tell();
            }
            if round.all_ended() {
                break;
            }
            if (round.stop_asked() && !heard_stop) || (round.failed() && !heard_failure) {
                heard_stop |= round.stop_asked();
                heard_failure |= round.failed();
                self.ending.tell();
                // Once this round is complete, every worker of every process has heard (and
                // run the hook): a process may now leave without its peers taking it for lost.
                control.exchange(
                    worker,
                    Contribution {
                        worker: me,
                        ..Contribution::default()
                    },
                );
                self.ending
                    .stop_heard
                    .fetch_or(heard_stop, Ordering::SeqCst);
                self.ending
                    .failure_heard
                    .fetch_or(heard_failure, Ordering::SeqCst);
            }
            let Some((id, is_final)) = round.request() else {
                continue;
            };
            joined = id;
            if is_final {
                self.ending.final_heard.store(true, Ordering::SeqCst);
                self.ending.tell();
            }
            if round.any_ended() {
                tracing::info!(
                    checkpoint = id,
                    "the dataflow ended while a checkpoint was being asked for; it is not written"
                );
                self.finish(me, is_final);
                continue;
            }
            // The sources of every process stop here (this process's may have already).
            self.paused.store(true, Ordering::SeqCst);
            match self.drain(worker, &mut control, &traffic) {
                Ok((drained_work, still)) => {
                    let saving = Instant::now();
                    let snapshot = self.snapshot(me, worker.peers(), states);
                    let saved_in = saving.elapsed();
                    // Everyone has saved once this round is complete; and the counts say whether
                    // anything moved between the drain's last round and a worker's save.
                    let after = control.exchange(
                        worker,
                        Contribution {
                            worker: me,
                            request: None,
                            ended: job_ended(worker, &control),
                            traffic: traffic.reading(),
                            ..Contribution::default()
                        },
                    );
                    deliver(WorkerCheckpoint {
                        id,
                        snapshot,
                        paused_for: started.elapsed(),
                        saved_in,
                        drained_work,
                        is_final,
                        consistent: after.traffic() == still,
                        end_of_input: false,
                    });
                    // Nobody reads again before every part is handed on, so a part is followed
                    // only by outputs of records read after the cut.
                    control.exchange(
                        worker,
                        Contribution {
                            worker: me,
                            ..Contribution::default()
                        },
                    );
                    self.finish(me, is_final);
                }
                Err(EndedDuringDrain) => {
                    // A dataflow has ended, so every one is about to: keep stepping.
                    tracing::info!(
                        checkpoint = id,
                        "the dataflow ended while a checkpoint was being taken; it is not written"
                    );
                    self.ended.store(true, Ordering::SeqCst);
                    self.finish(me, is_final);
                }
            }
        }
        self.ended.store(true, Ordering::SeqCst);
        if me == 0 {
            self.in_progress.store(false, Ordering::SeqCst);
        }
        // Every worker's dataflows have completed: nothing is in flight.
        sizes.report(me, states.sizes());
        let started = Instant::now();
        let snapshot = self.snapshot(me, worker.peers(), states);
        deliver(WorkerCheckpoint {
            // Every worker joined the same requests: the same id everywhere.
            id: (joined + 1).max(self.first_id.load(Ordering::SeqCst)),
            snapshot,
            paused_for: started.elapsed(),
            saved_in: started.elapsed(),
            drained_work: Duration::ZERO,
            is_final: true,
            consistent: true,
            end_of_input: true,
        });
        // The plane completes once every worker has closed it; timely then lets the worker go.
        control.close();
    }

    /// This worker's changes since its previous part, and its state's sizes.
    fn snapshot(
        &self,
        worker: usize,
        workers: usize,
        states: &OperatorStates,
    ) -> Result<WorkerSnapshot, CheckpointError> {
        let (changes, deferred) = states.save_changes()?;
        Ok(WorkerSnapshot {
            worker,
            workers,
            changes,
            deferred,
            sizes: states.sizes(),
        })
    }

    /// Steps with the other workers until nothing moves anywhere. Each round, every worker
    /// tells its message counts; the drain ends when two rounds in a row give the same sums with
    /// every data message sent also received (the four-counter rule of distributed termination:
    /// as the counts only grow, equal sums mean nobody sent or received anything between the
    /// rounds). Returns how long this worker spent working (not parked waiting for the others),
    /// and the sums it ended on.
    fn drain(
        &self,
        worker: &mut Worker,
        control: &mut ControlPlane,
        traffic: &Traffic,
    ) -> Result<(Duration, [u64; 4]), EndedDuringDrain> {
        let mut previous: Option<[u64; 4]> = None;
        let started = Instant::now();
        let parked_before = traffic.parked_nanos.load(Ordering::SeqCst);
        let working = || {
            let parked = traffic.parked_nanos.load(Ordering::SeqCst) - parked_before;
            started
                .elapsed()
                .saturating_sub(Duration::from_nanos(parked))
        };
        loop {
            let round = control.exchange(
                worker,
                Contribution {
                    worker: worker.index(),
                    request: None,
                    ended: job_ended(worker, control),
                    traffic: traffic.reading(),
                    ..Contribution::default()
                },
            );
            if round.any_ended() {
                return Err(EndedDuringDrain);
            }
            let now = round.traffic();
            let [data_sent, data_received, ..] = now;
            if data_sent == data_received && previous == Some(now) {
                return Ok((working(), now));
            }
            previous = Some(now);
            worker.step_or_park(Some(Duration::ZERO));
        }
    }
}

/// Whether every dataflow of `worker` but the control plane has completed.
fn job_ended(worker: &Worker, control: &ControlPlane) -> bool {
    worker
        .installed_dataflows()
        .iter()
        .all(|&index| index == control.dataflow())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a worker panicked; what it guards stays usable.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A dataflow ended during a checkpoint, which therefore cannot be completed.
#[derive(Debug)]
struct EndedDuringDrain;

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
