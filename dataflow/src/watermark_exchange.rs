//! The watermark exchange: how every worker's replica of the [`WatermarkBoard`] hears the other
//! workers' opinions, through the dataflow rather than through shared memory (so it works the
//! same when the workers are spread over processes, `docs/cluster-design.md` §1).
//!
//! Every worker builds a second, tiny dataflow beside the main graph: an input of
//! [`BoardUpdate`]s, broadcast to every worker, into a sink that applies each update to that
//! worker's replica. Ingest writes through a [`BoardPublisher`]: it publishes into its own replica
//! at once and sends an update when its opinion changes or it has partition reports or claims to
//! tell (at most one update per activation).
//!
//! The exchange is kept out of the way of the rest of the job:
//! - its timestamp is `()`: the input never advances, so it makes no progress traffic while it
//!   runs, and the checkpoint coordinator's progress counts (`timely/progress/u64`) never see it;
//! - its records are sent only by ingest, which sends nothing while a checkpoint pauses it, so a
//!   drain (which waits for every record sent to be received) sees at most the updates already in
//!   flight, and those arrive;
//! - ingest closes its input when it ends, so the exchange completes once every worker's ingest
//!   has, and `step_or_park` still ends when the main graph does;
//! - [`WatermarkExchange::install`] returns the exchange's dataflow index, for the dataflow monitor
//!   to leave it out ([`crate::monitor::DataflowMonitor::hide_dataflow`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::InputHandleVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::worker::Worker;

use crate::time::{BoardUpdate, Opinion, PartitionWatermark, Watermark, WatermarkBoard};

/// The exchange's input on one worker, shared by the exchange and the publisher; `None` once
/// closed.
type SharedInput = Rc<RefCell<Option<InputHandleVec<(), BoardUpdate>>>>;

/// One worker's end of the exchange, before the dataflow is built: hand [`Self::publisher`] to
/// ingest, then [`Self::install`] the exchange's dataflow.
pub struct WatermarkExchange {
    worker: usize,
    board: Arc<WatermarkBoard>,
    input: SharedInput,
}

impl WatermarkExchange {
    /// The exchange of `worker` (its job-wide index), feeding `board`, that worker's replica.
    pub fn new(worker: usize, board: Arc<WatermarkBoard>) -> Self {
        WatermarkExchange {
            worker,
            board,
            input: Rc::new(RefCell::new(Some(InputHandleVec::new()))),
        }
    }

    /// What ingest writes through.
    pub fn publisher(&self) -> BoardPublisher {
        BoardPublisher {
            worker: self.worker,
            board: Arc::clone(&self.board),
            input: Rc::clone(&self.input),
            seq: 0,
            last_sent: None,
            reports: Vec::new(),
            claims: Vec::new(),
            expects: Vec::new(),
            expect_for: Duration::ZERO,
        }
    }

    /// Builds the exchange's dataflow on `worker` and returns its dataflow index. Every worker
    /// must install it, in the same place among its dataflows.
    pub fn install(self, worker: &mut Worker) -> usize {
        let index = worker.next_dataflow_index();
        let WatermarkExchange {
            worker: me,
            board,
            input,
        } = self;
        worker.dataflow::<(), _, _>(move |scope| {
            let mut input = input.borrow_mut();
            // Closed already (it cannot be before the worker steps): an input that closes at once
            // keeps every worker's dataflows alike.
            let stream = match input.as_mut() {
                Some(handle) => handle.to_stream(scope),
                None => InputHandleVec::new().to_stream(scope),
            };
            stream.broadcast().sink(
                Pipeline,
                "ApplyWatermarkUpdates",
                move |(updates, _frontier)| {
                    updates.for_each(|_time, batch| {
                        for update in batch.iter() {
                            // This worker wrote its own slot when it published.
                            if update.sender != me {
                                board.receive(update);
                            }
                        }
                    });
                },
            );
        });
        index
    }
}

impl std::fmt::Debug for WatermarkExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatermarkExchange")
            .field("worker", &self.worker)
            .field("open", &self.input.borrow().is_some())
            .finish_non_exhaustive()
    }
}

/// Ingest's side of the board: writes into this worker's replica and tells the other workers.
pub struct BoardPublisher {
    worker: usize,
    board: Arc<WatermarkBoard>,
    input: SharedInput,
    seq: u64,
    /// The opinion in the last update sent (none sent yet: the initial opinion, which every
    /// replica starts with).
    last_sent: Option<Opinion>,
    reports: Vec<(String, PartitionWatermark)>,
    claims: Vec<String>,
    expects: Vec<(String, Opinion)>,
    expect_for: Duration,
}

impl std::fmt::Debug for BoardPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoardPublisher")
            .field("worker", &self.worker)
            .field("seq", &self.seq)
            .field("last_sent", &self.last_sent)
            .field("open", &self.input.borrow().is_some())
            .finish_non_exhaustive()
    }
}

impl BoardPublisher {
    /// This worker's replica.
    pub fn board(&self) -> &WatermarkBoard {
        &self.board
    }

    /// This worker reads `partition` again (see [`WatermarkBoard::claim`]); told with the next
    /// update.
    pub fn claim(&mut self, partition: &str) {
        self.board.claim(partition);
        self.claims.push(partition.to_string());
    }

    /// A finished partition continues in `successors` (see
    /// [`crate::source::RecordSource::successors`]): they hold the job watermark at `opinion`
    /// until a worker takes each up, for at most `wait`; told with the next update.
    pub fn expect_successors(&mut self, successors: Vec<String>, opinion: Opinion, wait: Duration) {
        let expected: Vec<(String, Opinion)> =
            successors.into_iter().map(|name| (name, opinion)).collect();
        self.board.expect(expected.iter().cloned(), wait);
        self.expects.extend(expected);
        self.expect_for = wait;
    }

    /// Records what `partition` says now (see [`WatermarkBoard::report_partition`]); told with
    /// the next update.
    pub fn report_partition(&mut self, partition: &str, report: PartitionWatermark) {
        self.board.report_partition(partition, report);
        self.reports.push((partition.to_string(), report));
    }

    /// Publishes this worker's opinion into its replica, tells the other workers when there is
    /// something new, and returns the job watermark (see [`WatermarkBoard::publish`]).
    pub fn publish(&mut self, opinion: Opinion) -> Watermark {
        let watermark = self.board.publish(self.worker, opinion);
        let changed = self.last_sent != Some(opinion);
        if changed
            || !self.reports.is_empty()
            || !self.claims.is_empty()
            || !self.expects.is_empty()
        {
            let mut input = self.input.borrow_mut();
            if let Some(handle) = input.as_mut() {
                self.seq += 1;
                handle.send(BoardUpdate {
                    sender: self.worker,
                    seq: self.seq,
                    opinion,
                    reports: std::mem::take(&mut self.reports),
                    claims: std::mem::take(&mut self.claims),
                    expects: std::mem::take(&mut self.expects),
                    expect_for_ms: self.expect_for.as_millis() as u64,
                });
                handle.flush();
                self.last_sent = Some(opinion);
            }
        }
        watermark
    }

    /// This worker publishes no more (its ingest has ended): closes its input of the exchange.
    pub fn close(&mut self) {
        self.input.borrow_mut().take();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    fn update(sender: usize, seq: u64, opinion: Opinion) -> BoardUpdate {
        BoardUpdate {
            sender,
            seq,
            opinion,
            reports: Vec::new(),
            claims: Vec::new(),
            expects: Vec::new(),
            expect_for_ms: 0,
        }
    }

    /// Replicas fed the same updates in different orders (including a sender's own updates out
    /// of order) know the same opinions, reports and expected partitions.
    #[test]
    fn replicas_converge_whatever_the_interleaving() {
        let template = WatermarkBoard::with_opinions(vec![Opinion::Undefined; 4]);
        template.expect(
            [
                ("kinesis:s/0".to_string(), Opinion::At(5)),
                ("kinesis:s/1".to_string(), Opinion::At(7)),
            ],
            Duration::from_secs(600),
        );
        let report = |wm| PartitionWatermark {
            watermark_ms: Some(wm),
            ..PartitionWatermark::default()
        };
        let mut updates = [
            update(1, 1, Opinion::At(10)),
            update(1, 2, Opinion::At(30)),
            update(2, 1, Opinion::Idle),
            update(2, 2, Opinion::At(20)),
            update(3, 1, Opinion::Finished),
        ];
        updates[1].reports.push(("file:b".to_string(), report(30)));
        updates[0].reports.push(("file:b".to_string(), report(10)));
        updates[3].claims.push("kinesis:s/1".to_string());
        updates[4].claims.push("kinesis:s/0".to_string());

        let orders: [&[usize]; 4] = [
            &[0, 1, 2, 3, 4],
            &[4, 3, 2, 1, 0],
            &[2, 0, 4, 3, 1],
            &[1, 3, 0, 4, 2],
        ];
        let replicas: Vec<WatermarkBoard> = orders
            .iter()
            .map(|order| {
                let replica = template.replica();
                for &i in *order {
                    replica.receive(&updates[i]);
                }
                replica
            })
            .collect();
        for replica in &replicas {
            assert_eq!(
                replica.opinions(),
                vec![
                    Opinion::Undefined,
                    Opinion::At(30),
                    Opinion::At(20),
                    Opinion::Finished
                ]
            );
            assert_eq!(replica.partitions()["file:b"], report(30));
            // Both restored partitions are claimed: worker 0's own opinion decides alone.
            assert_eq!(replica.others(0), Opinion::At(20));
            assert_eq!(replica.publish(0, Opinion::At(25)), Watermark::At(20));
        }
    }

    /// Two workers in one process: what worker 1 publishes reaches worker 0's replica through the
    /// exchange dataflow, and nothing else carries it.
    #[test]
    fn a_workers_opinion_reaches_the_other_replica_through_the_exchange() {
        let template = WatermarkBoard::with_opinions(vec![Opinion::Undefined; 2]);
        let replicas: Vec<Arc<WatermarkBoard>> =
            (0..2).map(|_| Arc::new(template.replica())).collect();
        let slots = Arc::new(Mutex::new(replicas.clone()));
        let guards = timely::execute(timely::Config::process(2), move |worker| {
            let index = worker.index();
            let board = Arc::clone(&slots.lock().unwrap()[index]);
            let exchange = WatermarkExchange::new(index, Arc::clone(&board));
            let mut publisher = exchange.publisher();
            exchange.install(worker);
            if index == 1 {
                publisher.report_partition(
                    "file:b",
                    PartitionWatermark {
                        watermark_ms: Some(40),
                        ..PartitionWatermark::default()
                    },
                );
                publisher.publish(Opinion::At(40));
            } else {
                // Before the exchange: worker 1 is undefined, so nothing is late yet.
                assert_eq!(publisher.publish(Opinion::At(50)), Watermark::MinusInfinity);
                while board.opinions()[1] != Opinion::At(40) {
                    worker.step_or_park(Some(Duration::from_millis(10)));
                }
                assert_eq!(publisher.publish(Opinion::At(50)), Watermark::At(40));
                assert_eq!(board.partitions()["file:b"].watermark_ms, Some(40));
            }
            publisher.close();
            while worker.step_or_park(Some(Duration::from_millis(10))) {}
        })
        .unwrap();
        for result in guards.join() {
            result.unwrap();
        }
        assert_eq!(replicas[0].watermark(), Watermark::At(40));
        assert_eq!(replicas[1].watermark(), Watermark::At(40));
    }
}
