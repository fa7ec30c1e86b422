//! The job graph as an operator sees it: each operator's records in and out, the records on each
//! edge, and how busy each operator is, read from timely's own logging.
//!
//! [`DataflowMonitor::attach`] registers a listener for the `timely` log of a worker, before the
//! worker builds its dataflow. From the log's events it learns
//! - the operators (`Operates`: a worker-unique id, an address in the scope tree, a name),
//! - the edges (`Channels`: from an operator's output port to an operator's input port),
//! - the records on each edge (`Messages`: a batch sent or received, with its record count),
//! - the time each operator runs (`Schedule`: start and stop).
//!
//! Each worker keeps its counts in plain vectors indexed by channel and operator id (no lookup by
//! key and no allocation per message) and adds them to the shared [`DataflowMonitor`] once a
//! second and when its dataflow ends. The figures are summed over the workers of the process;
//! an operator is named by its address, which is the same on every worker.
//!
//! What the figures mean:
//! - `records_in`: records the operator received on its inputs.
//! - `records_out`: records it emitted, counted once per output port (a stream that feeds two
//!   operators is sent twice, and each edge counts its own copy).
//! - `busy_ratio`: the share of wall time the operator was running over the last interval
//!   (about a second), averaged over the workers. This is what timely can measure honestly. Flink
//!   also shows "backpressured" time, an output waiting for room downstream; timely's channels
//!   between operators are unbounded, so no operator inside the graph ever waits on its output.
//!   The one place where the job does wait is the bounded channel to the sink thread: that
//!   waiting is part of the busy time of the `ForwardToSink` operators, so a busy sink operator
//!   *is* the backpressure.
//!
//! Only the job's own operators are reported: the children of a dataflow. An operator of a nested
//! scope (a region, an iteration) is counted into the top-level operator that holds it, and the
//! dataflow itself (timely's root subgraph) is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

/// How often a worker adds its counts to the shared monitor.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// An operator's place in the scope tree: the dataflow's index, then the operator's index in it.
type Address = Vec<usize>;

/// The operators and edges of the jobs' dataflows, summed over the workers that attached to it.
/// Share it as `Arc<DataflowMonitor>`.
#[derive(Debug, Default)]
pub struct DataflowMonitor {
    shared: Mutex<Totals>,
    /// Dataflows the view leaves out, by index (the watermark exchange's: it is plumbing, not
    /// the job).
    hidden: Mutex<BTreeSet<usize>>,
}

#[derive(Debug, Default)]
struct Totals {
    operators: BTreeMap<Address, OperatorTotals>,
    /// Records by sending operator, then receiving operator.
    edges: BTreeMap<Address, BTreeMap<Address, u64>>,
}

#[derive(Debug, Default)]
struct OperatorTotals {
    name: String,
    records_in: u64,
    records_out: u64,
    busy: Duration,
    /// Each worker's busy share over its last flush interval, by worker index.
    recent_busy: BTreeMap<usize, f64>,
}

/// The job graph with its figures, as [`DataflowMonitor::snapshot`] reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GraphSnapshot {
    /// The operators in creation order, which is a topological order (an operator consumes
    /// streams of operators created before it).
    pub operators: Vec<OperatorStats>,
    /// The edges between operators, in the order of their source.
    pub edges: Vec<EdgeStats>,
}

/// One operator's figures, summed over the workers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OperatorStats {
    /// Its address in the dataflow, dotted (`"0.3"`: operator 3 of dataflow 0).
    pub id: String,
    /// The name it was built with (`Ingest`, `Sessionize`, `ForwardToSink`, …).
    pub name: String,
    /// Records received on its inputs.
    pub records_in: u64,
    /// Records emitted, once per output port.
    pub records_out: u64,
    /// Share of wall time it ran over the last interval, averaged over the workers (0 to 1).
    pub busy_ratio: f64,
    /// Time it ran since the start, summed over the workers, ms.
    pub busy_ms_total: u64,
}

/// The records that went from one operator to another.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeStats {
    /// The sending operator's id.
    pub from: String,
    /// The receiving operator's id.
    pub to: String,
    /// Records sent on the edge, summed over the workers.
    pub records: u64,
}

impl DataflowMonitor {
    /// An empty monitor: no operator until a worker attached to it builds a dataflow.
    pub fn new() -> Self {
        DataflowMonitor::default()
    }

    /// Listens to `worker`'s timely log. Call it before the worker builds its dataflow: the
    /// operators and channels are logged as they are built.
    ///
    /// A log has one listener; one already installed (the checkpoint coordinator's, which counts
    /// the channel traffic) is kept behind this one: it gets every event, moved rather than
    /// copied, at the moment it would have got it on its own.
    pub fn attach(self: &Arc<Self>, worker: &mut timely::worker::Worker) {
        let mut log = WorkerLog::new(worker.index(), Arc::clone(self));
        if let Some(mut registry) = worker.log_register() {
            let previous = registry.get::<TimelyEventBuilder>("timely");
            registry.insert::<TimelyEventBuilder, _>("timely", move |time, events| {
                log.take(*time, events.as_ref());
                if let Some(previous) = &previous {
                    if let Some(events) = events.as_mut() {
                        previous.log_many(events.drain(..).map(|(_, event)| event));
                    }
                    previous.flush();
                }
            });
        }
    }

    /// Leaves the dataflow with index `index` (the same on every worker) out of the view.
    pub fn hide_dataflow(&self, index: usize) {
        self.hidden
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(index);
    }

    /// The operators and edges with their figures now.
    pub fn snapshot(&self) -> GraphSnapshot {
        let hidden = self
            .hidden
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        let shown = |address: &Address| !address.first().is_some_and(|i| hidden.contains(i));
        let totals = self.lock();
        let operators = totals
            .operators
            .iter()
            .filter(|(address, _)| shown(address))
            .map(|(address, operator)| {
                let workers = operator.recent_busy.len().max(1) as f64;
                OperatorStats {
                    id: dotted(address),
                    name: operator.name.clone(),
                    records_in: operator.records_in,
                    records_out: operator.records_out,
                    busy_ratio: operator.recent_busy.values().sum::<f64>() / workers,
                    busy_ms_total: u64::try_from(operator.busy.as_millis()).unwrap_or(u64::MAX),
                }
            })
            .collect();
        let edges = totals
            .edges
            .iter()
            .filter(|(from, _)| shown(from))
            .flat_map(|(from, targets)| {
                targets.iter().map(|(to, records)| EdgeStats {
                    from: dotted(from),
                    to: dotted(to),
                    records: *records,
                })
            })
            .collect();
        GraphSnapshot { operators, edges }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Totals> {
        // A poisoned lock only means a worker panicked while adding; the counts stay usable.
        self.shared
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn dotted(address: &[usize]) -> String {
    address
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The top-level operator that `address` is or belongs to; `None` for a dataflow itself.
fn job_operator(address: &[usize]) -> Option<&[usize]> {
    address.get(..2)
}

/// One worker's view of the log, between flushes.
struct WorkerLog {
    worker: usize,
    monitor: Arc<DataflowMonitor>,
    /// By operator id: its address and name, once logged.
    operators: Vec<Option<LocalOperator>>,
    /// By channel id: its ends and counts, once logged.
    channels: Vec<Option<LocalChannel>>,
    /// The log time of the last flush.
    flushed_at: Duration,
}

struct LocalOperator {
    address: Address,
    name: String,
    /// When the running activation started (log time), if it is running.
    started: Option<Duration>,
    /// Time run since the last flush.
    busy: Duration,
    /// Whether the shared monitor knows it.
    published: bool,
}

struct LocalChannel {
    /// The sending and receiving operators' addresses (a scope's own boundary is the scope).
    from: Address,
    to: Address,
    /// The sender's output port.
    from_port: usize,
    /// Whether this is the first channel out of its output port: only it counts `records_out`.
    counts_out: bool,
    sent: u64,
    received: u64,
    /// Whether the shared monitor knows the edge (shown before its first record).
    published: bool,
}

impl WorkerLog {
    fn new(worker: usize, monitor: Arc<DataflowMonitor>) -> Self {
        WorkerLog {
            worker,
            monitor,
            operators: Vec::new(),
            channels: Vec::new(),
            flushed_at: Duration::ZERO,
        }
    }

    /// Takes a batch of events; `None` is timely's flush (the worker stepped, or it ends).
    fn take(&mut self, time: Duration, events: Option<&Vec<(Duration, TimelyEvent)>>) {
        match events {
            Some(events) => {
                for (at, event) in events {
                    self.note(*at, event);
                }
            }
            None => self.flush(time),
        }
        if time.saturating_sub(self.flushed_at) >= FLUSH_INTERVAL {
            self.flush(time);
        }
    }

    fn note(&mut self, at: Duration, event: &TimelyEvent) {
        match event {
            TimelyEvent::Messages(message) => {
                if let Some(Some(channel)) = self.channels.get_mut(message.channel) {
                    let records = u64::try_from(message.record_count).unwrap_or(0);
                    if message.is_send {
                        channel.sent += records;
                    } else {
                        channel.received += records;
                    }
                }
            }
            TimelyEvent::Schedule(schedule) => {
                if let Some(Some(operator)) = self.operators.get_mut(schedule.id) {
                    match schedule.start_stop {
                        StartStop::Start => operator.started = Some(at),
                        StartStop::Stop => {
                            if let Some(started) = operator.started.take() {
                                operator.busy += at.saturating_sub(started);
                            }
                        }
                    }
                }
            }
            TimelyEvent::Operates(operates) => {
                let slot = slot(&mut self.operators, operates.id);
                *slot = Some(LocalOperator {
                    address: operates.addr.clone(),
                    name: operates.name.clone(),
                    started: None,
                    busy: Duration::ZERO,
                    published: false,
                });
            }
            TimelyEvent::Channels(channel) => {
                let end = |(index, _port): (usize, usize)| {
                    let mut address = channel.scope_addr.clone();
                    // Index 0 is the scope's own boundary: the scope itself.
                    if index > 0 {
                        address.push(index);
                    }
                    address
                };
                let from = end(channel.source);
                let from_port = channel.source.1;
                let counts_out = !self.channels.iter().flatten().any(|other| {
                    other.counts_out && other.from == from && other.from_port == from_port
                });
                let slot = slot(&mut self.channels, channel.id);
                *slot = Some(LocalChannel {
                    to: end(channel.target),
                    from,
                    from_port,
                    counts_out,
                    sent: 0,
                    received: 0,
                    published: false,
                });
            }
            _ => {}
        }
    }

    /// Adds what was counted since the last flush to the shared monitor.
    fn flush(&mut self, now: Duration) {
        let interval = now.saturating_sub(self.flushed_at);
        self.flushed_at = now;
        let mut totals = self.monitor.lock();
        for operator in self.operators.iter_mut().flatten() {
            let Some(top) = job_operator(&operator.address) else {
                continue;
            };
            // A running activation counts up to now; the rest counts at its stop.
            if let Some(started) = operator.started.as_mut() {
                operator.busy += now.saturating_sub(*started);
                *started = now;
            }
            if top.len() < operator.address.len() {
                // Nested: its time is already part of the enclosing top-level operator's.
                operator.busy = Duration::ZERO;
                continue;
            }
            if !operator.published {
                totals
                    .operators
                    .entry(operator.address.clone())
                    .or_default()
                    .name = operator.name.clone();
                operator.published = true;
            }
            if let Some(shared) = totals.operators.get_mut(&operator.address) {
                shared.busy += operator.busy;
                if !interval.is_zero() {
                    let ratio = operator.busy.as_secs_f64() / interval.as_secs_f64();
                    shared.recent_busy.insert(self.worker, ratio.min(1.0));
                }
            }
            operator.busy = Duration::ZERO;
        }
        for channel in self.channels.iter_mut().flatten() {
            if channel.published && channel.sent == 0 && channel.received == 0 {
                continue;
            }
            channel.published = true;
            let (sent, received) = (channel.sent, channel.received);
            channel.sent = 0;
            channel.received = 0;
            let (Some(from), Some(to)) = (job_operator(&channel.from), job_operator(&channel.to))
            else {
                continue;
            };
            if from == to {
                continue; // inside one top-level operator
            }
            if let Some(receiver) = totals.operators.get_mut(to) {
                receiver.records_in += received;
            }
            if channel.counts_out
                && let Some(sender) = totals.operators.get_mut(from)
            {
                sender.records_out += sent;
            }
            let targets = match totals.edges.get_mut(from) {
                Some(targets) => targets,
                None => totals.edges.entry(from.to_vec()).or_default(),
            };
            match targets.get_mut(to) {
                Some(records) => *records += sent,
                None => {
                    targets.insert(to.to_vec(), sent);
                }
            }
        }
    }
}

/// The slot of `id` in a vector indexed by id, grown as needed.
fn slot<T>(by_id: &mut Vec<Option<T>>, id: usize) -> &mut Option<T> {
    if by_id.len() <= id {
        by_id.resize_with(id + 1, || None);
    }
    &mut by_id[id]
}

#[cfg(test)]
mod tests {
    use timely::dataflow::channels::pact::{Exchange, Pipeline};
    use timely::dataflow::operators::Concat;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::vec::{Filter, Map, ToStream};

    use super::*;

    fn by_name<'a>(snapshot: &'a GraphSnapshot, name: &str) -> &'a OperatorStats {
        snapshot
            .operators
            .iter()
            .find(|operator| operator.name == name)
            .unwrap_or_else(|| panic!("no operator {name} in {snapshot:#?}"))
    }

    #[test]
    fn counts_the_records_in_and_out_of_each_operator_and_edge() {
        let monitor = Arc::new(DataflowMonitor::new());
        let attached = Arc::clone(&monitor);
        timely::execute_directly(move |worker| {
            attached.attach(worker);
            worker.dataflow::<u64, _, _>(|scope| {
                // 100 numbers; the even ones (50) go on, tripled into one stream with the odd
                // ones doubled (50 + 50), and into a sink.
                let numbers: timely::dataflow::StreamVec<'_, u64, u64> =
                    (0..100u64).to_stream(scope);
                let evens = numbers.clone().filter(|n| n % 2 == 0);
                let odds = numbers.filter(|n| n % 2 == 1).map(|n| n * 2);
                let tripled: timely::dataflow::StreamVec<'_, u64, u64> =
                    evens
                        .concat(odds)
                        .unary(Exchange::new(|n: &u64| *n), "Triple", |_, _| {
                            |input, output| {
                                input.for_each(|time, data| {
                                    output
                                        .session(&time)
                                        .give_iterator(data.drain(..).map(|n| n * 3));
                                });
                            }
                        });
                tripled.sink(Pipeline, "CountingSink", |(input, _)| {
                    input.for_each(|_, _| {});
                });
            });
        });
        let snapshot = monitor.snapshot();
        let source = by_name(&snapshot, "ToStreamBuilder");
        assert_eq!(source.records_in, 0);
        assert_eq!(
            source.records_out, 100,
            "sent once per port, though two filters read it"
        );
        let filters: Vec<_> = snapshot
            .operators
            .iter()
            .filter(|operator| operator.name == "Filter")
            .collect();
        assert_eq!(filters.len(), 2);
        for filter in &filters {
            assert_eq!(filter.records_in, 100);
            assert_eq!(filter.records_out, 50);
        }
        assert_eq!(by_name(&snapshot, "FlatMap").records_in, 50);
        assert_eq!(by_name(&snapshot, "Concatenate").records_in, 100);
        assert_eq!(by_name(&snapshot, "Concatenate").records_out, 100);
        let triple = by_name(&snapshot, "Triple");
        assert_eq!((triple.records_in, triple.records_out), (100, 100));
        let sink = by_name(&snapshot, "CountingSink");
        assert_eq!((sink.records_in, sink.records_out), (100, 0));

        // Two edges leave the source, 100 records each; one enters the sink.
        let from_source: Vec<_> = snapshot
            .edges
            .iter()
            .filter(|edge| edge.from == source.id)
            .collect();
        assert_eq!(from_source.len(), 2, "{snapshot:#?}");
        assert!(from_source.iter().all(|edge| edge.records == 100));
        let into_sink: Vec<_> = snapshot
            .edges
            .iter()
            .filter(|edge| edge.to == sink.id)
            .collect();
        assert_eq!(into_sink.len(), 1);
        assert_eq!(into_sink[0].from, triple.id);
        assert_eq!(into_sink[0].records, 100);

        // The dataflow itself is not an operator of the job; the others are in creation order.
        assert!(snapshot.operators.iter().all(|o| o.id.contains('.')));
        assert_eq!(
            snapshot.operators.first().map(|o| o.id.as_str()),
            Some(source.id.as_str())
        );
        assert_eq!(
            snapshot.operators.last().map(|o| o.id.as_str()),
            Some(sink.id.as_str())
        );
        assert!(
            snapshot
                .operators
                .iter()
                .all(|o| (0.0..=1.0).contains(&o.busy_ratio)),
            "{snapshot:#?}"
        );
    }

    #[test]
    fn a_listener_installed_before_keeps_every_event() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let monitor = Arc::new(DataflowMonitor::new());
        let attached = Arc::clone(&monitor);
        let sent_batches = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&sent_batches);
        timely::execute_directly(move |worker| {
            if let Some(mut registry) = worker.log_register() {
                registry.insert::<TimelyEventBuilder, _>("timely", move |_, events| {
                    for (_, event) in events.iter().flatten() {
                        if let TimelyEvent::Messages(message) = event
                            && message.is_send
                        {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            attached.attach(worker);
            worker.dataflow::<u64, _, _>(|scope| {
                (0..10u64)
                    .to_stream(scope)
                    .sink(Pipeline, "Sink", |(input, _)| input.for_each(|_, _| {}));
            });
        });
        assert!(
            sent_batches.load(Ordering::Relaxed) > 0,
            "the first listener saw no batch"
        );
        assert_eq!(by_name(&monitor.snapshot(), "Sink").records_in, 10);
    }

    #[test]
    fn an_edge_is_shown_before_its_first_record() {
        let monitor = Arc::new(DataflowMonitor::new());
        let attached = Arc::clone(&monitor);
        timely::execute_directly(move |worker| {
            attached.attach(worker);
            worker.dataflow::<u64, _, _>(|scope| {
                (0..0u64)
                    .to_stream(scope)
                    .sink(Pipeline, "Sink", |(input, _)| input.for_each(|_, _| {}));
            });
        });
        let snapshot = monitor.snapshot();
        assert_eq!(snapshot.edges.len(), 1, "{snapshot:#?}");
        assert_eq!(snapshot.edges[0].records, 0);
    }

    #[test]
    fn a_hidden_dataflow_is_left_out_of_the_view() {
        use crate::time::{Opinion, WatermarkBoard};
        use crate::watermark_exchange::WatermarkExchange;
        let monitor = Arc::new(DataflowMonitor::new());
        let attached = Arc::clone(&monitor);
        timely::execute_directly(move |worker| {
            attached.attach(worker);
            let board = Arc::new(WatermarkBoard::new(1));
            let exchange = WatermarkExchange::new(0, board);
            let mut publisher = exchange.publisher();
            worker.dataflow::<u64, _, _>(|scope| {
                (0..3u64)
                    .to_stream(scope)
                    .sink(Pipeline, "Job", |(input, _)| input.for_each(|_, _| {}));
            });
            attached.hide_dataflow(exchange.install(worker));
            publisher.publish(Opinion::Finished);
            publisher.close();
        });
        let snapshot = monitor.snapshot();
        assert!(snapshot.operators.iter().any(|o| o.name == "Job"));
        assert!(
            snapshot
                .operators
                .iter()
                .all(|o| o.id.starts_with("0.") || o.id == "0"),
            "only the job's dataflow (index 0) is shown: {snapshot:#?}"
        );
        assert!(
            snapshot.edges.iter().all(|e| e.from.starts_with('0')),
            "{snapshot:#?}"
        );
        assert!(
            !snapshot
                .operators
                .iter()
                .any(|o| o.name == "ApplyWatermarkUpdates")
        );
    }

    #[test]
    fn sums_the_workers_of_a_process() {
        let monitor = Arc::new(DataflowMonitor::new());
        let attached = Arc::clone(&monitor);
        timely::execute(timely::Config::process(2), move |worker| {
            attached.attach(worker);
            let index = worker.index() as u64;
            worker.dataflow::<u64, _, _>(|scope| {
                // Worker 0 makes 10 numbers, worker 1 makes 20; they are exchanged.
                (0..10 * (index + 1)).to_stream(scope).sink(
                    Exchange::new(|n: &u64| *n),
                    "Spread",
                    |(input, _)| {
                        input.for_each(|_, _| {});
                    },
                );
            });
        })
        .unwrap()
        .join()
        .into_iter()
        .for_each(Result::unwrap);
        let snapshot = monitor.snapshot();
        assert_eq!(by_name(&snapshot, "ToStreamBuilder").records_out, 30);
        assert_eq!(by_name(&snapshot, "Spread").records_in, 30);
        assert_eq!(snapshot.edges.len(), 1);
        assert_eq!(snapshot.edges[0].records, 30);
    }
}
