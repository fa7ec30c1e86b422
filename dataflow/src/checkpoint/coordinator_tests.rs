//! The coordinator across two processes: two timely clusters' worth of processes, each a thread
//! of this test with its own coordinator, connected over loopback as `pageflow` connects real
//! processes.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::{Operator, source};

use super::*;
use crate::stats::StateSizes;

/// Records read before the checkpoint is asked for.
const BEFORE: u64 = 50_000;

/// What every worker of both processes saw.
#[derive(Debug, Default)]
struct Seen {
    /// `(process, worker, id, consistent, records sent, records received)` at each part handed on.
    parts: Vec<(usize, usize, u64, bool, u64, u64)>,
    /// The ids of the end-of-input parts.
    ends: Vec<u64>,
}

fn free_addresses(count: usize) -> Vec<String> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("its address").to_string())
        .collect()
}

/// The configuration of process `process` of a cluster on `addresses`, one worker each.
fn one_worker_process(process: usize, addresses: &[String]) -> timely::Config {
    timely::Config {
        communication: timely::CommunicationConfig::Cluster {
            threads: 1,
            process,
            addresses: addresses.to_vec(),
            report: false,
            zerocopy: false,
        },
        worker: timely::WorkerConfig::default(),
    }
}

#[test]
fn a_checkpoint_across_two_processes_is_a_consistent_cut_of_both() {
    let addresses = free_addresses(2);
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    // The sources read until told to stop: only pausing stops them for a checkpoint.
    let stop = Arc::new(AtomicBool::new(false));
    let coordinators: Vec<Arc<CheckpointCoordinator>> =
        (0..2).map(|_| CheckpointCoordinator::new(1)).collect();

    let processes: Vec<_> = (0..2)
        .map(|process| {
            let config = one_worker_process(process, &addresses);
            let coordinator = Arc::clone(&coordinators[process]);
            let (sent, received, seen) =
                (Arc::clone(&sent), Arc::clone(&received), Arc::clone(&seen));
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                timely::execute(config, move |worker| {
                    let index = worker.index();
                    coordinator.attach(worker).expect("logging is on");
                    let states = coordinator.states(index, 1, Default::default());
                    let paused = coordinator.states(index, 1, Default::default());
                    let counted_in = Arc::clone(&received);
                    worker.dataflow::<u64, _, _>(|scope| {
                        // A source that reads only while not paused, as ingest does.
                        let counted = Arc::clone(&sent);
                        let stop = Arc::clone(&stop);
                        source(scope, "Paused source", move |capability, info| {
                            let activator = scope.activator_for(info.address);
                            let mut capability = Some(capability);
                            move |output| {
                                let Some(cap) = capability.as_mut() else {
                                    return;
                                };
                                if !paused.is_paused() {
                                    let batch = 64;
                                    {
                                        let mut session = output.session(&*cap);
                                        for n in 0..batch {
                                            session.give(n);
                                        }
                                    }
                                    counted.fetch_add(batch, Ordering::SeqCst);
                                    let next = *cap.time() + 1;
                                    cap.downgrade(&next);
                                }
                                if stop.load(Ordering::SeqCst) {
                                    capability = None;
                                } else {
                                    activator.activate();
                                }
                            }
                        })
                        // Every other record crosses to the other process.
                        .sink(
                            Exchange::new(|n: &u64| *n),
                            "Count",
                            move |(input, _)| {
                                input.for_each(|_, batch| {
                                    counted_in.fetch_add(batch.len() as u64, Ordering::SeqCst);
                                });
                            },
                        );
                    });
                    let sizes = StateSizes::default();
                    let seen = Arc::clone(&seen);
                    let (sent, received) = (Arc::clone(&sent), Arc::clone(&received));
                    coordinator.run(worker, &states, &sizes, move |part| {
                        if part.end_of_input {
                            seen.lock().unwrap().ends.push(part.id);
                            return;
                        }
                        seen.lock().unwrap().parts.push((
                            process,
                            index,
                            part.id,
                            part.consistent,
                            sent.load(Ordering::SeqCst),
                            received.load(Ordering::SeqCst),
                        ));
                    });
                })
                .map(|guards| guards.join())
                .map_err(|e| e.to_string())
            })
        })
        .collect();

    // Ask (in process 0, as the job's driver does) once records are flowing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::SeqCst) < BEFORE {
        assert!(Instant::now() < deadline, "no records flowed");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(coordinators[0].request(1, false));
    // Had a process's sources not paused, the drain would never end.
    while seen
        .lock()
        .unwrap()
        .parts
        .iter()
        .filter(|p| p.2 == 1)
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the checkpoint was not taken within a minute"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Both read again after it, then stop.
    let at_checkpoint = sent.load(Ordering::SeqCst);
    while sent.load(Ordering::SeqCst) < at_checkpoint + BEFORE {
        assert!(Instant::now() < deadline, "the sources did not resume");
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::SeqCst);
    for process in processes {
        let results = process.join().expect("the process thread ends");
        for result in results.expect("the cluster forms") {
            result.expect("the worker ends");
        }
    }

    let seen = seen.lock().unwrap();
    let checkpoint: Vec<_> = seen.parts.iter().filter(|p| p.2 == 1).collect();
    assert_eq!(
        checkpoint.len(),
        2,
        "one part per process: {:?}",
        seen.parts
    );
    assert_eq!(
        checkpoint
            .iter()
            .map(|p| p.1)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "the parts are the two workers'"
    );
    for (_, worker, _, consistent, sent, received) in &checkpoint {
        assert!(*consistent, "worker {worker}'s part is a consistent cut");
        // Both processes stand still from the drain until every part is handed on: at that
        // moment every record sent anywhere has been received.
        assert_eq!(
            sent, received,
            "worker {worker} handed its part on with records in flight"
        );
    }
    assert_eq!(
        checkpoint[0].4, checkpoint[1].4,
        "nothing moved between the two parts"
    );
    assert_eq!(
        seen.ends,
        [2, 2],
        "both processes take the end-of-input checkpoint, numbered alike after the last one"
    );
    assert_eq!(received.load(Ordering::SeqCst), sent.load(Ordering::SeqCst));
    assert!(coordinators.iter().all(|c| c.has_ended()));
}

/// Runs two one-worker processes over loopback, each with its own coordinator, over a dataflow
/// that holds its capability until `release` is set; returns their threads.
fn two_idle_processes(
    coordinators: &[Arc<CheckpointCoordinator>],
    release: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Result<(), String>>> {
    let addresses = free_addresses(2);
    (0..2)
        .map(|process| {
            let config = one_worker_process(process, &addresses);
            let coordinator = Arc::clone(&coordinators[process]);
            let release = Arc::clone(release);
            std::thread::spawn(move || {
                let guards = timely::execute(config, move |worker| {
                    let index = worker.index();
                    coordinator.attach(worker).expect("logging is on");
                    let states = coordinator.states(index, 1, Default::default());
                    let release = Arc::clone(&release);
                    worker.dataflow::<u64, _, _>(|scope| {
                        source::<u64, timely::container::CapacityContainerBuilder<Vec<u64>>, _, _>(
                            scope,
                            "Held",
                            move |capability, info| {
                                let activator = scope.activator_for(info.address);
                                let mut capability = Some(capability);
                                move |_output: &mut _| {
                                    if release.load(Ordering::SeqCst) {
                                        capability = None;
                                    } else if capability.is_some() {
                                        activator.activate_after(Duration::from_millis(5));
                                    }
                                }
                            },
                        )
                        .sink(
                            timely::dataflow::channels::pact::Pipeline,
                            "Nothing",
                            |(input, _)| input.for_each(|_, _: &mut Vec<u64>| {}),
                        );
                    });
                    coordinator.run(worker, &states, &StateSizes::default(), |_| {});
                })
                .map_err(|e| e.to_string())?;
                for result in guards.join() {
                    result?;
                }
                Ok(())
            })
        })
        .collect()
}

#[test]
fn a_stop_asked_in_one_process_is_heard_by_every_process_before_either_may_leave() {
    let coordinators: Vec<Arc<CheckpointCoordinator>> =
        (0..2).map(|_| CheckpointCoordinator::new(1)).collect();
    let told: Arc<Mutex<Vec<usize>>> = Arc::default();
    for (process, coordinator) in coordinators.iter().enumerate() {
        let told = Arc::clone(&told);
        coordinator.when_the_job_ends(move || told.lock().unwrap().push(process));
    }
    let release = Arc::new(AtomicBool::new(false));
    let processes = two_idle_processes(&coordinators, &release);
    assert!(!coordinators[0].stop_asked() && !coordinators[0].is_ending());

    coordinators[1].ask_to_stop();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !coordinators[0].stop_asked() {
        assert!(
            Instant::now() < deadline,
            "process 0 never heard process 1's stop"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Heard by process 0 means heard by every worker: process 1's hook ran already.
    let mut hooks = told.lock().unwrap().clone();
    hooks.sort_unstable();
    assert_eq!(
        hooks,
        [0, 1],
        "each process's hook runs once, before either leaves"
    );
    assert!(coordinators[0].is_ending());
    assert!(!coordinators[0].failure_heard(), "a stop is no failure");

    coordinators[0].report_failure();
    while !coordinators[1].failure_heard() {
        assert!(
            Instant::now() < deadline,
            "process 1 never heard process 0's failure"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        told.lock().unwrap().len(),
        2,
        "the hook runs once per process"
    );

    release.store(true, Ordering::SeqCst);
    for process in processes {
        process
            .join()
            .expect("the process thread ends")
            .expect("the workers end");
    }
    assert!(coordinators.iter().all(|c| c.stop_asked()));
}
